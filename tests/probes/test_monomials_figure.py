import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from progdistill.probes.monomials_figure import monomial_figure


def _records(support=(0, 3), degrees=(1, 2), steps=(0, 100, 200, 300)):
    """Teacher records shaped like ``probes/monomials.jsonl``'s, plus one student's (which the figure leaves out)."""
    records = []
    for t, step in enumerate(steps):
        summary = {}
        for d in degrees:
            summary[f"degree{d}/in_support_mean"] = 0.1 * t / d
            summary[f"degree{d}/off_support_mean"] = 0.01 * d
            summary[f"degree{d}/off_support_std"] = 0.005
        records.append(
            {
                "model": "teacher",
                "step": step,
                "eval_accuracy": 0.5 + 0.15 * t,
                "summary": summary,
                "degrees": [
                    {"degree": d, "in_support": [{"subset": [i], "correlation": 0.1 * t + i} for i in support]}
                    for d in degrees
                ],
            }
        )
    return [*records, {"model": "ce-seed0", "step": 300}]


def test_one_line_per_support_coordinate_and_two_per_degree():
    fig = monomial_figure(_records(), {"transition": {"start": 100, "end": 200}}, "tiny")
    left, right, accuracy = fig.axes
    labels = [line.get_label() for line in left.get_lines()]
    assert labels == ["in-support x_0", "in-support x_3", "off-support mean (+/- std)"]
    assert list(left.get_lines()[1].get_ydata()) == [3.0, 3.1, 3.2, 3.3]  # x_3's correlation at each checkpoint
    assert [line.get_label() for line in right.get_lines()] == [
        "degree 1 in-support",
        "degree 1 off-support",
        "degree 2 in-support",
        "degree 2 off-support",
    ]
    assert list(accuracy.get_lines()[0].get_xdata()) == [0, 100, 200, 300]  # the teacher only
    assert len(left.patches) == len(right.patches) == 1  # the detected transition, shaded in both
    assert left.get_title() == "tiny: degree-1 correlations of the teacher"
    plt.close(fig)


def test_no_transition_no_shading(tmp_path):
    fig = monomial_figure(_records(degrees=(1,)), {}, "tiny")
    assert all(not axis.patches for axis in fig.axes)
    fig.savefig(tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(fig)


def test_monomial_figure_legends_sit_outside_the_data():
    fig = monomial_figure(_records(), {"transition": {"start": 100, "end": 200}}, "tiny")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None] + list(fig.legends)
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(a.get_window_extent(renderer)) for a in fig.axes)
    plt.close(fig)
