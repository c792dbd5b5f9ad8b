"""The pictures anmc writes, at their real size: every text inside the canvas, the legend, the series
asked for in their own colours and markers, and the label strips of counterfactual videos. On a tiny
pendulum run (16x16 frames, a few steps): what is checked is the drawing, not the model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from anmc.analysis import plots  # noqa: E402
from anmc.cli import main  # noqa: E402
from anmc.vae.run import load_run  # noqa: E402
from anmc.analysis.intervene import intervened_module  # noqa: E402
from anmc.analysis.labels import label_panels, panel_scale, title_size  # noqa: E402

PRIOR = "priors/pendulum.anm"
SIZE = 16


@pytest.fixture(scope="module")
def run_dir(tiny_pendulum_run_dir):
    return tiny_pendulum_run_dir


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def texts_outside(fig) -> list[str]:
    """[] when the tight bounding box of everything drawn (titles, labels, tick labels that are drawn,
    legends, suptitle) lies inside the canvas; else the texts that leave it."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)  # inches
    w, h = fig.get_size_inches()
    if tight.x0 >= -1e-3 and tight.y0 >= -1e-3 and tight.x1 <= w + 1e-3 and tight.y1 <= h + 1e-3:
        return []
    width, height = fig.canvas.get_width_height()
    bad = []
    for t in fig.findobj(Text):
        box = t.get_window_extent(renderer)
        if t.get_visible() and t.get_text().strip() and (box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height):
            bad.append(f"{t.get_text()!r} at {box}")
    return bad or [f"something drawn reaches {tight} of a {w} x {h} in canvas"]


def overlapping_texts(ax) -> list[str]:
    """Pairs of the axes' own texts (title, labels) whose extents overlap."""
    renderer = ax.figure.canvas.get_renderer()
    texts = [t for t in (ax.title, ax.xaxis.label, ax.yaxis.label) if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    return [f"{a.get_text()} / {b.get_text()}" for i, a in enumerate(texts) for b, bb in zip(texts[i + 1 :], boxes[i + 1 :]) if boxes[i].overlaps(bb)]


def scatter_series(ax) -> dict:
    """gid -> (points (N, 2), colour hex, marker path vertices count) of the axes' scatter plots."""
    out = {}
    for coll in ax.collections:
        if coll.get_gid():
            out[coll.get_gid()] = (np.asarray(coll.get_offsets()), to_hex(coll.get_facecolor()[0]), len(coll.get_paths()[0].vertices))
    return out


def test_latent_figure_series_colours_legend_and_text(run):
    drag = intervened_module(run, intervention="drag")
    fig = plots.latent_figure(run, intervened=drag, intervention_label="prior under drag", max_points=500)
    assert fig.canvas.get_width_height() == (1100, 460)
    assert texts_outside(fig) == []
    ax = fig.axes[0]
    series = scatter_series(ax)
    arrows = next(c for c in ax.collections if c.get_gid() == "shift")
    del series["shift"]
    assert set(series) == {"prior", "posterior", "intervened"}
    # the arrows go from f(mu) to f'(mu): twice the drag moves the means about twice as far, from the same places
    assert len(arrows.get_offsets()) == min(150, n_points := min(500, 3 * (24 - 1)))
    twice = plots.latent_figure(run, intervened=intervened_module(run, edits=["c = 1.6"]), max_points=500)
    arrows2 = next(c for c in twice.axes[0].collections if c.get_gid() == "shift")
    np.testing.assert_allclose(arrows2.get_offsets(), arrows.get_offsets())
    assert np.abs(arrows.V).max() > 0
    np.testing.assert_allclose(arrows2.V, 2 * np.asarray(arrows.V), rtol=0.05, atol=0.02 * np.abs(arrows.V).max())
    assert {k: v[1] for k, v in series.items()} == {k: plots.COLOURS[k].lower() for k in series}
    assert len({v[2] for v in series.values()}) == 3  # three different markers
    assert all(len(v[0]) == n_points for v in series.values())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "prior p(z_t), linearized", "posterior q(z_t)", "prior under drag", "where it moves the prior's mean (magnified)"
    ]
    assert ax.get_xlabel() == "theta" and ax.get_ylabel() == "omega"
    # the loss panel has the train and validation curves of every epoch
    lines = {line.get_label(): line for line in fig.axes[1].get_lines()}
    assert {"train loss", "val loss", "train recon", "train kl"} <= set(lines)
    assert list(lines["train loss"].get_xdata()) == [1, 2]


def test_latent_figure_other_states_and_no_intervention(run):
    fig = plots.latent_figure(run, states=("omega", "theta"))
    ax = fig.axes[0]
    assert set(scatter_series(ax)) == {"prior", "posterior"}
    assert ax.get_xlabel() == "omega" and ax.get_ylabel() == "theta"
    assert texts_outside(fig) == []


def test_a_long_intervention_label_stays_on_the_canvas(run):
    label = "prior under c = 0.8; omega' = -(g / L) * sin(theta) - c * omega * abs(omega) with a long tail"
    fig = plots.latent_figure(run, intervened=intervened_module(run, intervention="quadratic_drag"), intervention_label=label)
    assert texts_outside(fig) == []


def test_reconstruction_figure_rows_columns_and_images(run):
    fig = plots.reconstruction_figure(run, clips=2, columns=5)
    assert texts_outside(fig) == []
    image_axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(image_axes) == 2 * 3 * 5
    first = fig.axes[0].get_images()[0].get_array()
    assert first.shape == (SIZE, SIZE)
    clip0 = run.payload["videos"]
    assert clip0  # rows are labelled with the clip's name and what they show
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels[1:3] == ["reconstruction", "prediction"] and labels[0].endswith("frame")
    assert [ax.get_title() for ax in fig.axes[:5]] == [f"t = {t}" for t in np.unique(np.linspace(0, 23, 5).round().astype(int))]
    # the frame row shows the clip's frames, the prediction row starts from the first column (0 ahead)
    from anmc.vae.run import load_run_clips

    frames = load_run_clips(run)[0].frames
    np.testing.assert_allclose(first, frames[0] / 255.0, atol=1e-6)
    assert fig.axes[2 * 5].get_xlabel() == "0 ahead" and fig.axes[2 * 5 + 4].get_xlabel() == "23 ahead"


def test_states_figure_fit_line_is_the_least_squares_slope(run):
    fig = plots.states_figure(run)
    assert fig is not None and texts_outside(fig) == []
    assert [ax.get_xlabel() for ax in fig.axes] == ["true theta", "true omega"]
    for ax in fig.axes:
        assert overlapping_texts(ax) == []
        pts = scatter_series(ax)["latent"][0]
        fit = next(line for line in ax.get_lines() if line.get_gid() == "fit")
        x, y = fit.get_xdata(), fit.get_ydata()
        slope = (y[1] - y[0]) / (x[1] - x[0])
        assert slope == pytest.approx(np.polyfit(pts[:, 0], pts[:, 1], 1)[0], rel=1e-6, abs=1e-9)
        assert f"slope {slope:+.3f}" in ax.get_title()


def test_many_states_are_a_grid_not_one_row():
    assert plots.state_grid(2) == (1, 2) and plots.state_grid(4) == (1, 4)
    assert plots.state_grid(5) == (2, 4) and plots.state_grid(12) == (3, 4) and plots.state_grid(0) == (1, 1)


def test_states_figure_without_truth_is_none(run, tmp_path):
    from anmc.synthetic.synth import synthesize

    synthesize(PRIOR, out_dir=tmp_path, clips=1, frames=12, size=SIZE, seed=5, fmt="npz")
    (tmp_path / "truth.csv").unlink()
    assert plots.states_figure(run, videos=[str(tmp_path)]) is None


def test_cli_plot_writes_the_three_pictures_at_their_sizes(run_dir, tmp_path):
    out = tmp_path / "pics" / "latent.png"
    result = CliRunner().invoke(main, ["plot", str(run_dir), "-o", str(out), "-i", "drag"])
    assert result.exit_code == 0, result.output
    sizes = {p.name: Image.open(p).size for p in out.parent.iterdir()}
    assert sizes["latent.png"] == (1100, 460)
    assert set(sizes) == {"latent.png", "latent_reconstructions.png", "latent_states.png"}
    assert sizes["latent_states.png"] == (840, 400)
    assert sizes["latent_reconstructions.png"] == (1040, 1085)  # 8 columns; 3 clips x 3 rows
    assert all(f"wrote {out.parent / name}" in result.output for name in sizes)


def test_cli_plot_into_a_folder(run_dir, tmp_path):
    """-o names a folder (an existing one, or a name without a suffix): the figures go inside it; a suffix
    matplotlib cannot write is still refused."""
    (tmp_path / "there").mkdir()
    for folder in (tmp_path / "there", tmp_path / "new"):
        result = CliRunner().invoke(main, ["plot", str(run_dir), "-o", str(folder)])
        assert result.exit_code == 0, result.output
        assert {p.name for p in folder.iterdir()} == {"latent.png", "latent_reconstructions.png", "latent_states.png"}
    result = CliRunner().invoke(main, ["plot", str(run_dir), "-o", str(tmp_path / "fig.xyz")])
    assert result.exit_code == 2 and "change the suffix" in result.output


def test_cli_eval_plots_dir(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--plots", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["latent.png", "latent_reconstructions.png", "latent_states.png"]


@pytest.mark.parametrize("size", [8, 16, 32, 64, 128])
def test_label_strip_titles_fit_whole(size):
    titles = ["video", "factual", "counterfactual"]
    frames = np.full((2, size, size), 40, dtype=np.uint8)
    out = label_panels([frames] * 3, titles)
    s = panel_scale(size, titles)
    assert s * size >= title_size("counterfactual")[0] + 4
    assert out.shape == (2, out.shape[1], 3 * s * size + 4, 3) and out.shape[1] > s * size
    strip = out[0, : out.shape[1] - s * size]
    for i, title in enumerate(titles):
        # the title's pixels lie inside its own panel's columns and span the whole title's drawn width
        # (a cut "coun" would span half of it)
        panel = strip[:, i * (s * size + 2) : i * (s * size + 2) + s * size]
        cols = np.nonzero((panel > 100).any(axis=(0, 2)))[0]
        rows = np.nonzero((panel > 100).any(axis=(1, 2)))[0]
        assert cols.min() > 0 and cols.max() < s * size - 1 and rows.min() > 0 and rows.max() < strip.shape[0] - 1
        assert abs((cols.max() - cols.min() + 1) - title_size(title)[0]) <= 2, title


def test_counterfactual_video_and_latent_plot_are_labelled(run, tmp_path):
    import anmc

    cf = anmc.intervene(run.run_dir, edits=["c = 0.8"], frames=10)
    frame = cf.side_by_side()[0]
    assert frame.shape[1] == 3 * panel_scale(SIZE, ["video", "factual", "counterfactual"]) * SIZE + 4
    import matplotlib.pyplot as plt

    path = cf.plot(tmp_path / "lat.png")
    assert Image.open(path).size == (880, 528)
    fig = cf.figure()
    assert texts_outside(fig) == []
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["factual", "counterfactual"]
    (legend,) = fig.legends  # below the panels, over no curve
    assert [t.get_text() for t in legend.get_texts()] == ["factual", "counterfactual"]
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    np.testing.assert_allclose(lines[1].get_ydata(), cf.latents[0, :, 0])
    long = anmc.intervene(run.run_dir, edits=["c = 0.8", "omega' = -(g / L) * sin(theta) - c * omega * abs(omega) - 0.1 * omega"], frames=10)
    assert texts_outside(long.figure()) == []
    plt.close("all")


# Machado, Oliveira & Fernandes (2009), severity 1.0, on linear RGB
CVD = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
    "normal": np.eye(3).tolist(),
}


def _lab(hex_colour: str, matrix) -> np.ndarray:
    """CIELAB (D65) of a colour as seen through a simulated colour-vision deficiency."""
    srgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ np.clip(np.array(matrix) @ linear, 0, 1)
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_the_three_series_colours_stay_apart_under_colour_vision_deficiencies():
    keys = ["prior", "posterior", "intervened"]
    for name, matrix in CVD.items():
        for a in range(3):
            for b in range(a + 1, 3):
                distance = np.linalg.norm(_lab(plots.COLOURS[keys[a]], matrix) - _lab(plots.COLOURS[keys[b]], matrix))
                assert distance > 50, (name, keys[a], keys[b], distance)
    assert len({plots.MARKERS[k] for k in keys}) == 3
