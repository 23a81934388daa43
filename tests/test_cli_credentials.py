"""Credentials in URLs are never kept in clear: ``fetch`` of ``http://user:secretpass@host/...``
leaves the password in none of the checkpoint (every byte of the SQLite files), the exported
manifest, the report, or what the run printed; the URL is never sent (the server's own access log)
and its row says why (``credentials_in_url``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers import carcrawl_cmd, sandbox_in_thread

SECRET = "secretpass"


def test_a_password_in_a_url_is_kept_nowhere_and_never_sent(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nmax_retries = 0\n')
    with sandbox_in_thread(latency_ms=(0, 0), hosts=2, fault_rate=0.0) as sb:
        good, secret_one = list(sb.image_urls(2))
        with_password = secret_one.replace("http://", f"http://user:{SECRET}@", 1)
        (tmp_path / "urls.txt").write_text(f"{good}\n{with_password}\n")
        env = {**os.environ, "COLUMNS": "200"}
        runs = [subprocess.run([*carcrawl_cmd(), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                               env=env)
                for args in (["fetch", "urls.txt", "--out", "out", "--no-classify"],
                             ["export", "out", "--format", "parquet", "--no-dedup"],
                             ["report", "out"],
                             ["status", "out"],
                             ["why", with_password, "out"])]
        sent = [a.path for a in sb.access_log.requests()]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
        assert SECRET not in r.stdout + r.stderr
    secret_path = secret_one.split("/", 3)[3]
    assert not any(secret_path in p for p in sent), sent  # never sent, not even without the password
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "report.html" for p in files)
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    story = json.loads(subprocess.run([*carcrawl_cmd(), "why", with_password, "out", "--json"], capture_output=True,
                                      text=True, timeout=60, cwd=tmp_path, check=True).stdout)
    assert story["state"] == "failed" and story["reason"] == "credentials_in_url"
    assert story["url"] == secret_one  # kept without the credentials, so the user can tell which
    assert "credentials_in_url" in runs[3].stdout  # status counts it
