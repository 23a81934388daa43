"""Config: the shipped file equals the defaults; bad keys and values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from carcrawl.config import Settings, load_settings
from carcrawl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_documents_exactly_the_defaults() -> None:
    assert load_settings(ROOT / "config.toml") == Settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[download]\nconcurency = 3", "download.concurency: unknown key (did you mean 'concurrency'?)"),
        ('[classify]\ndevice = "tpu"', "classify.device: 'tpu' is not one of auto, cpu, cuda, cuda:N"),
        ('[classify]\npolicy = "vibes"', "classify.policy: 'vibes' is not allowed; expected one of 'head', 'mass'"),
        ("[download]\nconcurrency = -1", "download.concurrency: must be greater than 0"),
        ('[engines.bing]\nrate = "fast"', "engines.bing.rate: expected a number"),
        ("[classify]\nthreshold = 1.5", "classify.threshold: must be between 0 and 1"),
        ("[download]\nverify_tls = 1", "download.verify_tls: expected true or false"),
        ('[crawl]\nsources = ["altavista"]', "crawl.sources: unknown source 'altavista'"),
        ("[crawl\nout=1", "not valid TOML"),
        ("[nosuch]\nx = 1", "nosuch: unknown key"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def test_cli_overrides_win_and_are_validated(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[download]\nconcurrency = 8\n")
    s = load_settings(p, {"download.concurrency": 16, "crawl.out": "x"})
    assert s.download.concurrency == 16 and s.out_dir == Path("x")
    assert s.checkpoint_path == Path("x") / "checkpoint.sqlite"
    with pytest.raises(ConfigError, match="command line: download.concurrency: expected an integer"):
        load_settings(p, {"download.concurrency": "many"})


def test_engine_tables_merge_over_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[engines.bing]\nrate = 2\noptions = { size = "large" }\n')
    s = load_settings(p)
    assert s.engines["bing"].rate == 2.0
    assert s.engines["bing"].per_page == 35  # the default survives
    assert s.engines["bing"].options == {"size": "large"}
    assert s.engines["openverse"] == Settings().engines["openverse"]
