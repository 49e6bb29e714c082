"""The README's demo command runs to the end and reports agreement (exit status 0)."""

from mlxtriton import demo


def test_demo_runs(capsys):
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "agreement: yes" in out and "matches block(x): True" in out
