"""Plots: files are written, are real images, and bad input is refused."""

import json

import numpy as np
import pytest

from tfnas import plots
from tfnas.resolve import get_genotype


def _bowl(n=21):
    x = np.linspace(-1, 1, n)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    return x, 0.5 + 3 * xx ** 2 + yy ** 2 + 0.3 * np.sin(4 * xx * yy)


def _png_is_nontrivial(path):
    import matplotlib.image
    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 200 and image.shape[1] > 200
    # Not blank: many distinct colours.
    assert len(np.unique(image.reshape(-1, image.shape[-1])[:, :3].round(2), axis=0)) > 50


def test_contour_surface_curve_spectrum(tmp_path):
    x, z = _bowl()
    plots.plot_contour(x, x, z, path=tmp_path / "contour.png", title="bowl")
    plots.plot_contour(x, x, z, path=tmp_path / "contour.pdf")
    plots.plot_surface(x, x, z, path=tmp_path / "surface.png", zlabel="gradient variance")
    plots.plot_curve(x, z[:, 10], accuracy=np.linspace(0.2, 0.9, x.size), path=tmp_path / "curve.png")
    grid = np.linspace(-1, 5, 300)
    density = np.exp(-grid ** 2 / 0.1) + 0.01 * np.exp(-(grid - 4) ** 2 / 0.01)
    plots.plot_spectrum((grid, density / np.trapezoid(density, grid)), eigenvalues=[4.0, 3.1, -0.5],
                        path=tmp_path / "spectrum.png")
    for name in ("contour.png", "surface.png", "curve.png", "spectrum.png"):
        _png_is_nontrivial(tmp_path / name)
    assert (tmp_path / "contour.pdf").read_bytes()[:4] == b"%PDF"


def test_training_curves_grouped_by_width(tmp_path):
    dirs = []
    for i, name in enumerate(["DARTS_V2", "SNAS_MILD", "NASNet", "DARTS_V2"]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        genotype = get_genotype(name)
        (run / "config.json").write_text(json.dumps({"genotype": name,
                                                     "genotype_resolved": {**genotype.to_dict(), "name": name}}))
        rows = [{"epoch": e, "test_loss": 2.0 / (e + 1) + 0.05 * i} for e in range(1, 11)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
        dirs.append(run)
    fig = plots.plot_training_curves(dirs, path=tmp_path / "curves.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["width 3.5c (2 runs)", "width 4c (1 run)", "width 5c (1 run)"]
    _png_is_nontrivial(tmp_path / "curves.png")
    assert plots.width_band(3.4) == 3.5 and plots.width_band(2.2) == 2.0


def test_bad_input():
    x, z = _bowl(5)
    with pytest.raises(plots.PlotError):
        plots.plot_contour(x, x, z[:, :3])
    with pytest.raises(plots.PlotError):
        plots.save_figure(plots.plot_curve(x, z[0]), "out.gif")
    with pytest.raises(plots.PlotError):
        plots.plot_contour(x, x, np.full((5, 5), np.nan))
