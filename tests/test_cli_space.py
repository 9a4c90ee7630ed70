import json

from search_space import ArchSpec

from .helpers import one_line_error, run_cli

def test_space_sample_writes_loadable_specs(tmp_path):
    out = tmp_path / "s.jsonl"
    run_cli("space", "sample", "--n", "7", "--seed", "3", "--out", str(out))
    specs = [ArchSpec.from_json(line) for line in out.read_text().splitlines()]
    assert len(specs) == 7 and all(not s.problems() for s in specs)


def test_space_check_json_report():
    res = run_cli("space", "check", "--n", "3", "--seed", "4", "--img-size", "8", "--in-chans", "1", "--json")
    report = json.loads(res.stdout)
    assert len(report["archs"]) == 6 + 3 and report["failures"] == []
    assert report["max_rel_err"] <= 1e-4
    assert {"norm", "attention"} <= set(report["coverage"])
    assert all(a["ok"] and a["flops"] > 0 and a["params"] > 0 for a in report["archs"])


def test_bad_space_file_is_one_line_exit_2(tmp_path):
    f = tmp_path / "space.json"
    f.write_text("{not json")
    res = run_cli("space", "sample", "--n", "1", "--out", str(tmp_path / "x"), "--space", str(f), check=False)
    one_line_error(res)
