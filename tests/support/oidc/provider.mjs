// A real OpenID Connect provider for citeline's sign-in tests: panva's oidc-provider (certified by the OpenID
// Foundation), pinned in package.json, with a minimal login page of our own (user + password, consent granted
// at once) instead of its development interactions.
//
// Environment: PORT, ISSUER (http://127.0.0.1:PORT), JWKS_FILE (the signing keys, private JWKs: the test makes
// them, so it can also mint tokens with the provider's key), ACCOUNTS_FILE (JSON {"user": {"password", "email",
// "groups"}}, read at every login and token: a test edits it to change a user's groups), CLIENTS_FILE (JSON list
// of oidc-provider client metadata). Prints "listening" once it serves.
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const env = process.env;
const accounts = () => JSON.parse(fs.readFileSync(env.ACCOUNTS_FILE, 'utf8'));

const provider = new Provider(env.ISSUER, {
  clients: JSON.parse(fs.readFileSync(env.CLIENTS_FILE, 'utf8')),
  jwks: JSON.parse(fs.readFileSync(env.JWKS_FILE, 'utf8')),
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  conformIdTokenClaims: false, // the scopes' claims go into the ID token itself
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  cookies: { keys: ['citeline-test-provider-cookie-key'] },
  ttl: { IdToken: Number(env.ID_TOKEN_TTL || 3600) },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const account = accounts()[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        const now = accounts()[id] || {};
        return { sub: id, email: now.email, email_verified: true, groups: now.groups || [] };
      },
    };
  },
});
provider.proxy = false;

function readForm(req) {
  return new Promise((resolve) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => resolve(new URLSearchParams(body)));
  });
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><title>Test IdP</title><form method="post" action="/interaction/${details.uid}">
<input name="login" id="login"><input name="password" id="password" type="password">
<button type="submit" id="submit">Sign in</button></form>`);
    return;
  }
  const form = await readForm(req);
  const account = accounts()[form.get('login')];
  if (!account || account.password !== form.get('password')) {
    res.writeHead(401, { 'content-type': 'text/plain' });
    res.end('wrong user or password');
    return;
  }
  const grant = new provider.Grant({ accountId: form.get('login'), clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { login: { accountId: form.get('login') }, consent: { grantId } },
    { mergeWithLastSubmission: false });
}

const callback = provider.callback();
http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(err));
    });
  } else {
    callback(req, res);
  }
}).listen(Number(env.PORT), '127.0.0.1', () => console.log('listening'));
