"""The report's order and the scaling law's plot (issue 30): results first, then generations, then diagnostics; an
untrusted fit is never drawn as the configuration chosen. Fast: results directories made by hand, no Ray."""

import pytest

from test_scaling import BUDGET, SIZES, _points, _results_dir
from test_trust import make_checkpoint, make_search
from tune import plots, report
from tune.scaling import choose


def _sections(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def test_report_reads_results_then_generations_then_diagnostics(tmp_path):
    exp = make_search(tmp_path / "results")
    make_checkpoint(exp / "final")
    sections = _sections(report.write_report(exp, max_new_tokens=2).read_text())
    assert sections[:4] == ["Summary", "Final model (the winner trained for the final budget)",
                            "All trials, by validation loss", "Generations"]
    assert sections.index("Plots") > sections.index("Generations")


def test_the_scaling_section_comes_after_the_plots_and_says_whether_it_is_trusted(tmp_path, monkeypatch):
    import tune.scaling

    exp = _results_dir(tmp_path)
    sections = _sections(report.write_report(exp).read_text())
    assert sections[0] == "Summary" and sections.index("Scaling law: which configuration for the final budget") > \
        sections.index("Plots")
    text = (exp / "report.md").read_text()
    assert "**The fit is trusted: its pick is the configuration for the final budget.**" in text
    check = {**tune.scaling.held_back(_points()), "mae": 10.0}  # the held-back error larger than any gap
    monkeypatch.setattr(tune.scaling, "held_back", lambda points: check)
    text = report.write_report(exp).read_text()
    assert "**The fit is not trusted (a diagnostic only): the raw winner is the configuration" in text


@pytest.mark.parametrize("trusted", [True, False])
def test_an_untrusted_fit_is_not_drawn_as_a_solid_pick(tmp_path, monkeypatch, trusted):
    """A trusted fit: the configuration the final budget takes is the solid bold line. An untrusted fit draws no
    solid line (its predictions are dotted, the raw winner's bold as the one trained); final/'s measured loss is a
    star beside them."""
    import tune.scaling

    if not trusted:
        check = {**tune.scaling.held_back(_points()), "mae": 10.0}
        monkeypatch.setattr(tune.scaling, "held_back", lambda points: check)
    choice = choose(_points(), list(SIZES), "s", 4 * BUDGET)
    assert choice["pick"] == "m" and choice["trusted"] is trusted
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig))
    plots.scaling_law(_points(), choice, tmp_path / "scaling_law.png", "flops", measured=(4 * BUDGET, 1.5))
    ax = figs[0].axes[0]
    lines = {line.get_label().split(":")[0].split(" (")[0]: line for line in ax.get_lines()
             if "params" in line.get_label()}
    if trusted:
        assert lines["fit's pick"].get_linestyle() == "-" and lines["fit's pick"].get_alpha() == 1.0
        assert lines["raw winner"].get_linestyle() != "-"
    else:
        assert set(lines) == {"raw winner, kept", "fit's pick, not trusted"}
        assert all(line.get_linestyle() == ":" for line in lines.values())
        assert lines["raw winner, kept"].get_linewidth() > lines["fit's pick, not trusted"].get_linewidth()
    assert ("NOT trusted" in ax.get_title()) is not trusted
    assert [line.get_marker() for line in ax.get_lines() if line.get_label() == "final/: measured 1.5000"] == ["*"]
    assert ax.get_xlabel() == "spend of the decayed copy (FLOPs)"
