"""
Run Tangram 0.6.0's own channel service (compiled Rust) as a process of its own.

The benchmarks compare ours with it in the same run, so it must be measurable alone:
its CPU and RSS are read from /proc of this process. The wheel is fetched once with
``pip download`` into benchmarks/.cache (gitignored) and only ``tangram_core/_core*.so``
is unpacked from it; neither is ever committed.

    python benchmarks/reference.py --port 2348 --redis-url redis://127.0.0.1:6390 --jwt-secret s
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
VERSION = "0.6.0"


def fetch_core(cache: Path = CACHE) -> Path:
    """Path of the reference's ``_core*.so``, downloading the wheel on first use."""
    target = cache / "tangram_core"
    found = glob.glob(str(target / "_core*.so"))
    if found:
        return Path(found[0])
    cache.mkdir(parents=True, exist_ok=True)
    wheels = glob.glob(str(cache / f"tangram_core-{VERSION}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"tangram-core=={VERSION}", "-d", str(cache)],
            check=True,
        )
        wheels = glob.glob(str(cache / f"tangram_core-{VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = [n for n in wheel.namelist() if n.startswith("tangram_core/_core") and n.endswith(".so")]
        for name in names:
            wheel.extract(name, cache)
    return Path(glob.glob(str(target / "_core*.so"))[0])


def load_core(path: Path) -> ModuleType:
    """Import the extension module straight from its file, without the rest of tangram_core."""
    spec = importlib.util.spec_from_file_location("tangram_core._core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def serve(core: ModuleType, args: argparse.Namespace) -> None:
    config = core.ChannelConfig(
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        jwt_secret=args.jwt_secret,
        jwt_expiration_secs=args.jwt_expiration_secs,
        id_length=args.id_length,
    )
    # run() hands back an awaitable that only completes when the server stops.
    await core.run(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2348)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6390")
    parser.add_argument("--jwt-secret", default=os.environ.get("TANGRAM_CHANNEL_JWT_SECRET", "secret"))
    parser.add_argument("--jwt-expiration-secs", type=int, default=315360000)
    parser.add_argument("--id-length", type=int, default=8)
    parser.add_argument("--log-level", default="warn", help="tracing filter for the reference's stderr log")
    parser.add_argument("--fetch-only", action="store_true", help="download and unpack, then exit")
    args = parser.parse_args(argv)
    path = fetch_core()
    if args.fetch_only:
        print(path)
        return
    core = load_core(path)
    core.init_tracing_stderr(args.log_level)
    try:
        asyncio.run(serve(core, args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
