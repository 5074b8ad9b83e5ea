from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from citeline.connectors.folder import FolderConnector
from citeline.contracts.connector import Checkpoint, Failure, Upsert
from citeline.domain import Access, ContentType
from citeline.errors import ConfigError, ConnectorError
from citeline.testing.connectors import ConnectorContract, item_ids, run_sync

pytestmark = pytest.mark.unit

STAFF = Access(groups=("staff",))


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def make(root: Path, default: Access = STAFF, **config: object) -> FolderConnector:
    return FolderConnector(FolderConnector.Config(path=root, **config), default)


def docs(connector: FolderConnector) -> dict:
    return {c.document.external_id: c.document for c in connector.sync(None) if isinstance(c, Upsert)}


def failures(connector: FolderConnector) -> dict[str, str]:
    return {c.external_id: c.reason for c in connector.sync(None) if isinstance(c, Failure)}


@pytest.fixture
def wiki(tmp_path: Path) -> Path:
    root = tmp_path / "wiki"
    write(root, "faq.md", "---\ntitle: Product FAQ\naccess: {public: true}\n---\n# Questions\n\nAsk us.\n")
    write(
        root,
        "eng/deploy.md",
        "---\naccess:\n  groups: [engineering]\n---\n# Deploys\n\nRoll back with `acme deploy --undo`.\n",
    )
    write(root, "eng/notes.txt", "Plain notes about the build farm.\n")
    write(
        root,
        "hr/leave.html",
        "<html><head><title>Parental leave</title></head><body><h1>Leave</h1><p>16 weeks.</p></body></html>",
    )
    write(root, "welcome.md", "Welcome to the wiki.\n")
    write(root, "broken.md", "---\ntitle: [unclosed\n---\nbody\n")
    return root


class TestFolderContract(ConnectorContract):
    @pytest.fixture
    def connector(self, wiki: Path) -> FolderConnector:
        return make(wiki, checkpoint_every=2)


def test_ids_are_relative_posix_paths_in_sorted_order(wiki: Path) -> None:
    ids = item_ids(run_sync(make(wiki)))
    assert ids == ["broken.md", "eng/deploy.md", "eng/notes.txt", "faq.md", "hr/leave.html", "welcome.md"]


def test_front_matter_access_overrides_the_default(wiki: Path) -> None:
    found = docs(make(wiki))
    assert found["faq.md"].access == Access(public=True)  # an access block replaces the default whole
    assert found["eng/deploy.md"].access == Access(groups=("engineering",))
    assert found["welcome.md"].access == STAFF
    assert docs(make(wiki, Access.private()))["welcome.md"].access == Access.private()


def test_front_matter_users_only(tmp_path: Path) -> None:
    write(tmp_path, "carol.md", "---\naccess: {users: [carol], groups: []}\n---\nFor Carol only.\n")
    assert docs(make(tmp_path))["carol.md"].access == Access(users=("carol",))


def test_front_matter_is_stripped_and_title_rules(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "---\ntitle: From Front Matter\ntags: [x, y]\n---\n# Heading\n\nText.\n")
    write(tmp_path, "b.md", "```\n# not a heading\n```\n\n# Real Heading #\n\nText.\n")
    write(tmp_path, "c-page.md", "## Only a level two heading\n\nText.\n")
    write(tmp_path, "d.html", "<body><h1>First <em>H1</em></h1><p>x</p></body>")
    write(tmp_path, "e.txt", "just words\n")
    found = docs(make(tmp_path))
    assert found["a.md"].title == "From Front Matter"
    assert found["a.md"].text.startswith("# Heading")
    assert "title:" not in found["a.md"].text
    assert found["a.md"].metadata == {"tags": "x, y"}
    assert found["b.md"].title == "Real Heading"
    assert found["c-page.md"].title == "c-page"
    assert found["d.html"].title == "First H1"
    assert found["e.txt"].title == "e"


def test_content_types(wiki: Path) -> None:
    found = docs(make(wiki))
    assert found["faq.md"].content_type is ContentType.MARKDOWN
    assert found["hr/leave.html"].content_type is ContentType.MARKDOWN
    assert found["eng/notes.txt"].content_type is ContentType.PLAIN


def test_html_is_converted_to_markdown(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title>Salary bands</title><style>p {color: red}</style>
    <meta name="citeline-access" content='{"groups": ["hr"]}'></head>
    <body><script>alert("x")</script><!-- a comment -->
    <h1>Bands</h1><p>Engineers are <b>paid</b> well.<br>Really.</p>
    <h2>Levels</h2><ul><li>L1: junior</li><li>L2: <a href="#">senior</a></li></ul>
    <table><tr><th>Level</th><th>Band</th></tr><tr><td>L1</td><td>50k</td></tr></table>
    <pre>code  block</pre><div>Loose <i>inline</i> text</div></body></html>"""
    write(tmp_path, "bands.html", html)
    doc = docs(make(tmp_path))["bands.html"]
    assert doc.title == "Salary bands"
    assert doc.access == Access(groups=("hr",))
    assert doc.text.split("\n\n") == [
        "# Bands",
        "Engineers are paid well. Really.",
        "## Levels",
        "- L1: junior\n- L2: senior",
        "Level | Band",
        "L1 | 50k",
        "```\ncode  block\n```",
        "Loose inline text",
    ]
    assert "alert" not in doc.text and "color" not in doc.text and "comment" not in doc.text


def test_bad_html_access_meta_is_a_failure(tmp_path: Path) -> None:
    write(tmp_path, "a.html", "<meta name='citeline-access' content='groups: hr'><p>x</p>")
    write(tmp_path, "b.html", "<meta name='citeline-access' content='{\"groups\": \"bad name\"}'><p>x</p>")
    found = failures(make(tmp_path))
    assert "not JSON" in found["a.html"]
    assert "invalid" in found["b.html"]


def test_url_building(tmp_path: Path) -> None:
    write(tmp_path, "guides/deploy process.md", "x\n")
    write(tmp_path, "index.html", "<p>x</p>")
    found = docs(make(tmp_path, base_url="https://wiki.acme.example/"))
    assert found["guides/deploy process.md"].url == "https://wiki.acme.example/guides/deploy%20process"
    assert found["index.html"].url == "https://wiki.acme.example/index"
    assert docs(make(tmp_path))["index.html"].url is None


def test_updated_at_is_the_utc_mtime(tmp_path: Path) -> None:
    path = write(tmp_path, "a.md", "x\n")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    assert docs(make(tmp_path))["a.md"].updated_at == datetime.fromtimestamp(1_700_000_000, tz=UTC)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"caf\xe9 latin-1\n", "not valid UTF-8"),
        ("---\ntitle: [unclosed\n---\nbody\n", "not valid YAML"),
        ("---\n- a\n- b\n---\nbody\n", "not a mapping"),
        ("---\ntitle: x\nbody without a closing line\n", "never closes"),
        ("---\naccess: {groups: [has space]}\n---\nbody\n", "front matter access is invalid"),
        ("---\naccess: {public: maybe}\n---\nbody\n", "public must be true or false"),
        ("---\naccess: {owners: [x]}\n---\nbody\n", "unknown access keys"),
        ("---\naccess: [engineering]\n---\nbody\n", "must be a mapping"),
        ("---\ntitle: {a: b}\n---\nbody\n", "title must be a string"),
        ("---\ntitle: Empty\n---\n\n  \n", "has no text"),
        ("", "has no text"),
    ],
)
def test_bad_files_are_failures_and_the_walk_goes_on(tmp_path: Path, content: str | bytes, expected: str) -> None:
    write(tmp_path, "a-good.md", "# Good\n\nfine\n")
    write(tmp_path, "b-bad.md", content)
    write(tmp_path, "c-good.txt", "fine too\n")
    changes = run_sync(make(tmp_path))
    assert [type(c) for c in changes] == [Upsert, Failure, Upsert, Checkpoint]
    assert changes[1].external_id == "b-bad.md"
    assert expected in changes[1].reason
    assert make(tmp_path).list_ids() == ["a-good.md", "b-bad.md", "c-good.txt"]


def test_file_over_max_bytes_is_a_failure(tmp_path: Path) -> None:
    write(tmp_path, "big.md", "x" * 200)
    write(tmp_path, "small.md", "x" * 10)
    connector = make(tmp_path, max_bytes=100)
    assert "over max_bytes=100" in failures(connector)["big.md"]
    assert set(docs(connector)) == {"small.md"}


def test_hidden_files_and_other_suffixes_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, ".hidden.md", "x\n")
    write(tmp_path, ".git/HEAD.md", "x\n")
    write(tmp_path, "image.png", b"\x89PNG")
    write(tmp_path, "UPPER.MD", "x\n")
    write(tmp_path, "page.md", "x\n")
    assert make(tmp_path).list_ids() == ["UPPER.MD", "page.md"]


def test_include_globs(tmp_path: Path) -> None:
    write(tmp_path, "docs/a.md", "x\n")
    write(tmp_path, "docs/deep/b.md", "x\n")
    write(tmp_path, "other/c.md", "x\n")
    write(tmp_path, "d.txt", "x\n")
    assert make(tmp_path, include=["docs/*.md"]).list_ids() == ["docs/a.md", "docs/deep/b.md"]
    assert make(tmp_path, include=["**/*.txt"]).list_ids() == ["d.txt"]


def test_symlinks_outside_the_root_are_ignored(tmp_path: Path) -> None:
    root, outside = tmp_path / "wiki", tmp_path / "secret"
    write(outside, "passwords.md", "hunter2\n")
    write(root, "page.md", "x\n")
    (root / "leak.md").symlink_to(outside / "passwords.md")
    (root / "leakdir").symlink_to(outside, target_is_directory=True)
    (root / "alias.md").symlink_to(root / "page.md")
    (root / "dangling.md").symlink_to(tmp_path / "missing.md")
    connector = make(root)
    assert connector.list_ids() == ["alias.md", "page.md"]
    assert all("hunter2" not in d.text for d in docs(connector).values())


def test_resume_after_a_path(wiki: Path) -> None:
    connector = make(wiki)
    assert item_ids(run_sync(connector, {"after": "faq.md"})) == ["hr/leave.html", "welcome.md"]
    assert item_ids(run_sync(connector, {"after": "zzz"})) == []
    assert item_ids(run_sync(connector, {"after": "eng/deploy.md.deleted"})) == [
        "eng/notes.txt",
        "faq.md",
        "hr/leave.html",
        "welcome.md",
    ]


def test_checkpoints_every_n_files_and_a_final_empty_one(wiki: Path) -> None:
    cursors = [c.cursor for c in run_sync(make(wiki, checkpoint_every=4)) if isinstance(c, Checkpoint)]
    assert cursors == [{"after": "faq.md"}, {}]


@pytest.mark.parametrize("cursor", [{"line": 3}, {"after": 3}, {"after": "x", "extra": 1}])
def test_foreign_cursor_is_refused(wiki: Path, cursor: dict) -> None:
    with pytest.raises(ConnectorError, match="reset the source's sync state"):
        run_sync(make(wiki), cursor)


def test_validate_refuses_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="does not exist"):
        make(tmp_path / "nope").validate()
    write(tmp_path, "file.md", "x")
    with pytest.raises(ConnectorError, match="is not a folder"):
        make(tmp_path / "file.md").validate()
    with pytest.raises(ConnectorError):
        make(tmp_path / "nope").list_ids()


def test_unreadable_subfolder_fails_the_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "ok.md", "x\n")
    write(tmp_path, "locked/a.md", "x\n")
    real_open = os.open

    def open_(path: object, flags: int, *args: object, **kwargs: object) -> int:  # chmod 000 does not stop root
        if Path(os.fsdecode(path)).name == "locked":  # the walk opens each folder before listing it
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    changes = run_sync(make(tmp_path))
    assert [item_ids(changes), type(changes[0])] == [["locked", "ok.md"], Failure]
    assert "cannot be listed" in changes[0].reason
    with pytest.raises(ConnectorError, match="locked"):
        make(tmp_path).list_ids()


def test_config_accepts_a_mapping_and_refuses_unknown_keys(tmp_path: Path) -> None:
    assert FolderConnector({"path": str(tmp_path)}, None).default_access == Access.private()
    with pytest.raises(ConfigError, match="invalid connector config"):
        FolderConnector({"path": str(tmp_path), "recursive": True}, None)


def test_acme_example_wiki_parses_with_the_access_the_demo_relies_on() -> None:
    wiki = Path(__file__).resolve().parents[2] / "examples" / "acme" / "wiki"
    changes = run_sync(make(wiki, base_url="https://wiki.acme.example"))
    assert not [c for c in changes if isinstance(c, Failure)]
    found = {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}
    assert found["engineering/deploy-process.md"].access == Access(groups=("engineering",))
    assert "## Rolling back a deploy" in found["engineering/deploy-process.md"].text
    assert found["return-policy.md"].access.public
    assert found["hr/parental-leave.html"].access == Access(groups=("hr",))
    assert found["hr/reorganisation-plan.md"].access == Access(users=("carol",))
    assert found["onboarding.md"].access == STAFF
