"""The run folder's figures (issue 32): an adaptive run's training curves one cycle after
another on one axis, DG0 fields drawn cell by cell, colour-bar labels inside the figure.
The curves and artists are checked, not pixels (``demos/demo_hjb.py`` checks its legend's
lines by their pixels itself)."""

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.app.output import (_dg0_cells, _layout, _natural_coordinates, _states_figure, _training_curves,
                                _training_figure, _weights_figure, cell_polygons)
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="figures are drawn by one rank")


def adaptive_history(its=(4, 3, 5), every=2):
    """Rows as an adaptive run writes them: per cycle iterations 0..its[c], the test loss
    every ``every`` iterations."""
    rows = []
    for c, n in enumerate(its):
        for i in range(n + 1):
            row = {"cycle": c, "iteration": i, "J": 1.0 / (1 + c + i), "train_accuracy": 0.5}
            if i % every == 0:
                row.update(test_loss=2.0 / (1 + c + i), test_accuracy=0.4)
            rows.append(row)
    return rows


def test_training_curves_of_an_adaptive_run_are_cumulative():
    history = adaptive_history()
    J = _training_curves(history, "J")
    assert [c for c, _, _ in J] == [0, 1, 2]
    offsets = [0, 4, 7]  # the sums of the earlier cycles' iterations
    for (c, x, y), off, n in zip(J, offsets, (4, 3, 5)):
        assert np.array_equal(x, off + np.arange(n + 1)) and np.allclose(y, 1.0 / (1 + c + np.arange(n + 1)))
    test = _training_curves(history, "test_loss")  # every cycle's test curve, on the same axis
    assert [c for c, _, _ in test] == [0, 1, 2]
    for (_, x, _), off, n in zip(test, offsets, (4, 3, 5)):
        assert np.array_equal(x, off + np.arange(0, n + 1, 2))
    # a plain run: one curve, its own iterations
    plain = [{k: v for k, v in h.items() if k != "cycle"} for h in history[:5]]
    [(c, x, _)] = _training_curves(plain, "J")
    assert c is None and np.array_equal(x, np.arange(5))
    # the figure: a line a cycle and metric, the cycles' starts labelled above the axes
    fig = _training_figure(history, "adaptive")
    loss, acc = fig.axes[:2]
    assert len([ln for ln in loss.get_lines() if ln.get_color() == "C0"]) == 3  # J, one line a cycle
    assert len([ln for ln in acc.get_lines() if ln.get_color() == "C2"]) == 3  # test accuracy
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["J (train loss + regulariser)", "test loss"]
    fig.canvas.draw()
    for ax in (loss, acc):
        [top] = ax.child_axes  # the secondary x axis above
        assert [t.get_text() for t in top.get_xticklabels()] == ["cycle 0", "cycle 1", "cycle 2"]
        assert np.allclose(top.get_xticks(), offsets)


def refined_triangles():
    """A DG0 space on a locally refined triangle mesh (as an adaptive run makes it)."""
    from fem_dnn.learning.transfer import refine_nodes

    sp = NodeSpace(create_node_mesh(MPI.COMM_SELF, "rectangle", 4, cell="triangle"), "DG", 0)
    return refine_nodes(sp, np.arange(0, sp.n, 5))


def test_dg0_fields_are_drawn_cell_by_cell():
    """states.png and weights.png of a DG0 space on an unstructured mesh: one polygon a
    cell in natural order, coloured by the cell's value (no interpolation between cells);
    the polygons are the cells (centroids, areas: quadrilaterals in order around)."""
    from matplotlib.collections import PolyCollection

    sp = refined_triangles()
    cells = _dg0_cells(sp)
    coords = _natural_coordinates(sp)
    assert len(cells) == sp.n and np.allclose([c.mean(axis=0) for c in cells], coords, atol=1e-12)
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(3, sp.n))
    fig = _states_figure(coords, cells, np.linspace(0, 1, 3), [Z], ["sample 0"])
    for j, ax in enumerate(fig.axes[:3]):
        [coll] = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(coll.get_paths()) == sp.n and np.array_equal(coll.get_array(), Z[j])
    a, b = rng.normal(size=(2, sp.n)), rng.normal(size=(2, sp.n, sp.n))
    fig = _weights_figure(coords, cells, np.linspace(0, 1, 3), a, b)
    colls = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(colls) == 2 and all(np.array_equal(c.get_array(), a[k]) for k, c in enumerate(colls))
    # quadrilaterals: vertices in order around the cell (shoelace area = the cell's)
    quads = NodeSpace(create_node_mesh(MPI.COMM_SELF, "rectangle", 3, cell="quadrilateral"), "DG", 0)
    for p in cell_polygons(quads):
        x, y = p[:, 0], p[:, 1]
        assert abs(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) - 1 / 9) < 1e-12
    # 1D: the steps of the cell function
    line = NodeSpace(create_node_mesh(MPI.COMM_SELF, "interval", 6), "DG", 0)
    fig = _states_figure(_natural_coordinates(line), _dg0_cells(line), [0.0, 1.0], [np.arange(12.0).reshape(2, 6)], ["s"])
    [steps] = fig.axes[0].patches
    edges, values = steps.get_data().edges, steps.get_data().values
    assert np.allclose(edges, np.linspace(0, 1, 7)) and np.array_equal(values, np.arange(6.0))


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_colour_bar_labels_inside_the_figure(layers):
    """weights.png of the dense kernel on 8 x 8 pixels: biases of up to 7.2 give colour-bar
    ticks like "-7.5", and from one layout pass the "bias a" label ended outside the
    figure; laid out as it is saved, every axis label and title is inside."""
    sp = NodeSpace(create_node_mesh(MPI.COMM_SELF, "rectangle", 8, cell="quadrilateral"), "DG", 0)
    a = 7.2 * np.sin(np.arange(layers * sp.n) * 0.7).reshape(layers, sp.n)
    b = np.cos(np.arange(layers * sp.n * sp.n) * 0.3).reshape(layers, sp.n, sp.n)
    fig = _weights_figure(_natural_coordinates(sp), _dg0_cells(sp), np.linspace(0, 1, layers + 1), a, b)
    _layout(fig)
    fig.canvas.draw()  # the pass savefig makes
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = [t for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label, ax.title) if t.get_text()]
    assert any(t.get_text() == "bias a" for t in texts)
    for t in texts:
        e = t.get_window_extent(renderer)
        assert box.x0 - 0.5 <= e.x0 and e.x1 <= box.x1 + 0.5 and box.y0 - 0.5 <= e.y0 and e.y1 <= box.y1 + 0.5, \
            (t.get_text(), e, box)
