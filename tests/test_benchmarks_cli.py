"""The benchmark scripts' command lines: bad values and an output that cannot be written are one
line naming the option, with argparse's exit code 2, before any work."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cli(load_script):
    return load_script("benchmarks/_cli.py")


@pytest.mark.parametrize(
    ("kind", "args", "text", "expected"),
    [
        ("whole", (), "abc", "must be a whole number >= 1, got 'abc'"),
        ("whole", (), "0", "must be a whole number >= 1, got 0"),
        ("whole", (50,), "-5", "must be a whole number >= 50, got -5"),
        ("number", (), "-5", "must be a finite number > 0, got -5"),
        ("number", (), "inf", "must be a finite number > 0, got inf"),
        ("number", (0.0, False), "x", "must be a number >= 0, got 'x'"),
        ("whole_numbers", (), "1,-1", "must be a whole number >= 1, got -1"),
        ("whole_numbers", (), ",", "must be a whole number >= 1, got ''"),
        ("names", (["basic", "joblib"],), "basic,foo", "'foo' is not one of basic, joblib"),
        ("names", (["basic", "joblib"],), ",", "give one or more of basic, joblib"),
    ],
)
def test_option_types_refuse_bad_values_naming_what_is_wanted(cli, kind, args, text, expected):
    with pytest.raises(argparse.ArgumentTypeError, match=expected):
        getattr(cli, kind)(*args)(text)


def test_option_types_read_good_values(cli):
    assert cli.whole(0)("0") == 0 and cli.number(0.0, strict=False)("0") == 0.0 and cli.number()("2.5") == 2.5
    assert cli.number(unit="s")("1") == 1.0 and cli.whole_numbers()("1, 8,64") == [1, 8, 64]
    assert cli.names(["a", "b"])("b,a") == ["b", "a"]


def test_an_output_that_cannot_be_written_is_refused_before_any_work(cli, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="bench")
    assert cli.check_out(parser, tmp_path / "new" / "out.json") == tmp_path / "new" / "out.json"
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())  # the probe is gone
    assert cli.check_out(parser, tmp_path / "figures", folder=True).is_dir()
    (tmp_path / "file").write_text("")
    (tmp_path / "kept.json").write_text("{}")
    (tmp_path / "kept.json").chmod(0o444)
    refused = [(tmp_path / "file" / "out.json", False), (tmp_path, False), (tmp_path / "file", True)]
    if os.geteuid() != 0:  # root writes any file
        refused.append((tmp_path / "kept.json", False))
    for path, folder in refused:
        with pytest.raises(SystemExit) as stopped:
            cli.check_out(parser, path, folder=folder)
        assert stopped.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"bench: error: argument --out: cannot write {path}"), line


def test_a_benchmark_refuses_its_bad_options_before_it_starts(tmp_path):
    """The launcher benchmark runs sweeps for minutes: its options are checked first."""
    script = str(BENCHMARKS / "launcher_overhead.py")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}  # where a sweep's app and stores would go
    for args, expected in (
        (["--jobs", "-1"], "argument --jobs: must be a whole number >= 1, got -1"),
        (["--launchers", "foo"], "argument --launchers: 'foo' is not one of basic, joblib"),
        (["--out", str(tmp_path / "f" / "x.json"), "--repeat", "0"], "argument --repeat: must be a whole number"),
    ):
        (tmp_path / "f").write_text("")
        done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert expected in done.stderr.splitlines()[-1], done.stderr
    done = subprocess.run(
        [sys.executable, script, "--out", str(tmp_path / "f" / "x.json")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and "argument --out: cannot write" in done.stderr.splitlines()[-1], done.stderr
    assert not list(scratch.iterdir())  # nothing made
