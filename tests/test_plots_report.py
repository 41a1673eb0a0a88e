"""Figures and report from a small hand-made run folder.

Writing every figure as PNG and PDF takes seconds (matplotlib's drawing, whatever the data's size): those tests
are `integration`; the others check the figures drawn in memory.
"""

import pandas as pd
import pytest

from pibench.mpc.protocols import PROTOCOLS
from pibench.report.plots import FIGURES, plot_run
from pibench.report.report import write_report
from pibench.results import LAYERS_FILE, RESULT_COLUMNS, RESULTS_FILE, LayerRow, ResultRow, append_rows, load_results

MODELS = [
    # model, method, budget, relus, accuracy, bytes
    ("base", "baseline", None, 4608, 97.0, 2_500_000),
    ("drd_50", "deepreduce", 2304, 2048, 95.0, 1_400_000),
    ("drd_5", "deepreduce", 230, 192, 80.0, 600_000),
    ("senet_50", "senet", 2304, 2304, 96.0, 1_520_000),
    ("senet_5", "senet", 230, 230, 90.0, 620_000),
]


def fixture_run(run_dir, cost_only=False, netns=False, protocols=("crypten:dealer",)):
    """A run folder as `pibench sweep` writes it. Under crypten:fss a ReLU costs 16 bytes and the
    latency less (so protocols differ); the p10-p90 spread grows with the ReLUs. The client stores its
    offline bytes under crypten:dealer, 245 B per ReLU under crypten:fss, nothing without a dealer."""
    rows, layers = [], []
    for (model, method, budget, relus, acc, sent), key in ((m, k) for k in protocols for m in MODELS):
        protocol = PROTOCOLS.get(key)
        per_relu = 16 if protocol.name == "fss" else 464
        sent = sent - (464 - per_relu) * relus
        latency = (0.08 if protocol.name == "fss" else 0.1) + relus * 1e-5
        for network, bw, rtt in (("lan", 3000.0, 0.3), ("wan", 400.0, 40.0)):
            rows.append(
                dict(
                    run_id="fixture",
                    timestamp="2026-11-22T00:00:00+00:00",
                    model=model,
                    arch="resnet_digits",
                    dataset="digits",
                    method=method,
                    budget=budget,
                    relus=relus,
                    macs=1_000_000,
                    accuracy=None if cost_only else acc,
                    cost_only=cost_only,
                    mpc_agreement=1.0,
                    mpc_accuracy=acc,
                    max_logit_error=0.001,
                    mpc_samples=16,
                    network=network,
                    bandwidth_mbps=bw,
                    rtt_ms=rtt,
                    link=f"netns:{bw:g}mbit" if netns else "loopback",
                    latency_s_median=latency,
                    latency_s_p10=latency - 0.005,
                    latency_s_p90=latency + relus * 1e-6,
                    latency_s_samples="0.1;0.1;0.1",
                    compute_s=0.05,
                    comm_s=0.05,
                    projected_latency_s=0.05 + 40 * rtt / 1000 + sent * 8 / (bw * 1e6),
                    bytes_per_party=sent,
                    rounds=40,
                    relu_bytes=per_relu * relus,
                    linear_bytes=sent - per_relu * relus,
                    setup_s=0.1,
                    setup_bytes=100,
                    offline_s=0.2 if protocol.dealer else None,
                    offline_bytes=sent // 3 if protocol.dealer else None,
                    offline_bytes_client=sent // 3 if protocol.dealer else None,
                    offline_bytes_server=0 if protocol.dealer else None,
                    client_storage_bytes=(245 * relus if protocol.name == "fss" else sent // 3) if protocol.dealer
                    else 0,
                    batch=1,
                    repeats=3,
                    backend=protocol.backend,
                    protocol=protocol.key,
                    security=protocol.security,
                    threads=1,
                    torch_version="2.13.0",
                    crypten_version="0.4.1",
                    pibench_version="0.1.0",
                    git_commit="abc",
                    host="ci",
                    error=None,
                )
            )
        for i, (op, t, b) in enumerate(
            (("conv", 0.03, 300_000), ("relu", relus * 1e-5, per_relu * relus), ("linear", 0.001, 1000))
        ):
            layers.append(
                dict(
                    run_id="fixture",
                    model=model,
                    op_index=i,
                    op=op,
                    layer=f"l{i}",
                    relus=relus if op == "relu" else 0,
                    time_s=t,
                    bytes=b,
                    rounds=(1 if protocol.name == "fss" else 9) if op == "relu" else 1,
                    protocol=key,
                )
            )
    rows.append({**rows[-1], "model": "broken", "error": "RuntimeError: boom"})
    # Written through the result schema, so these files have exactly the columns a run writes.
    append_rows(run_dir / RESULTS_FILE, [ResultRow(**r) for r in rows])
    append_rows(run_dir / LAYERS_FILE, [LayerRow(**r) for r in layers])
    return run_dir


@pytest.mark.integration
def test_every_figure_is_written_non_empty(tmp_path):
    run = fixture_run(tmp_path / "run", protocols=("crypten:dealer", "crypten:fss"))
    written = plot_run(run)
    for name in FIGURES:
        for ext in ("png", "pdf"):
            path = run / "figures" / f"{name}.{ext}"
            assert path in written
            assert path.stat().st_size > 1000


@pytest.mark.integration
def test_paper_anchors_are_plotted(tmp_path):
    run = fixture_run(tmp_path / "run")
    anchors = tmp_path / "anchors.csv"
    pd.DataFrame({"method": ["senet"], "relus": [2000], "accuracy": [97.0]}).to_csv(anchors, index=False)
    assert run / "figures" / "accuracy_vs_relus.png" in plot_run(run, anchors=anchors)


@pytest.mark.integration
def test_netns_run_draws_measured_latency_per_network(tmp_path):
    run = fixture_run(tmp_path / "run", netns=True)
    assert run / "figures" / "latency_vs_relus.png" in plot_run(run)


@pytest.mark.integration
def test_cost_only_run_skips_accuracy_figures(tmp_path):
    run = fixture_run(tmp_path / "run", cost_only=True)
    names = {p.stem for p in plot_run(run)}
    assert names == {"latency_vs_relus", "communication_vs_relus", "online_vs_offline", "storage_vs_relus",
                     "layer_breakdown"}


@pytest.mark.integration
def test_two_protocols_side_by_side_in_figures_and_report(tmp_path):
    run = fixture_run(tmp_path / "run", protocols=("crypten:dealer", "crypten:tfp", "spu:cheetah"))
    assert {p.stem for p in plot_run(run)} == set(FIGURES)
    text = write_report(run).read_text()
    assert "- `crypten:dealer`: semi-honest client/server; non-colluding dealer (it deals Beaver triples" in text
    assert "- `crypten:tfp` **(not secure: benchmark only)**: INSECURE: the client generates" in text
    assert "- `spu:cheetah`: semi-honest client/server; no dealer (CHEETAH" in text
    # one line per model and protocol; tfp has no offline phase, so its offline cells are empty
    assert "| senet_5 · crypten:dealer | 230 | 230 | 90.00 | 100.0 |" in text
    tfp_line = next(line for line in text.splitlines() if line.startswith("| senet_5 · crypten:tfp |"))
    assert tfp_line.endswith("| 0.62 | 40 |  |  |")


@pytest.mark.integration
def test_report_compares_two_protocols_and_explains_why(tmp_path):
    run, _, _ = two_by_two(tmp_path)
    extra = load_results(run).query("model == 'drd_5'").assign(run_id="second")  # a later run into the same folder
    append_rows(run / RESULTS_FILE, [ResultRow(**{k: (None if pd.isna(v) else v) for k, v in r.items()})
                                     for r in extra[RESULT_COLUMNS].to_dict("records")])
    text = write_report(run).read_text()
    assert "- run ids: fixture, second" in text
    dealer, fss = (next(line for line in text.splitlines() if line.startswith(f"- `crypten:{p}`: semi-honest"))
                   for p in ("dealer", "fss"))
    assert dealer != fss and "FSS comparison keys" in fss
    section = text.split("## Protocols compared")[1].split("\n## ")[0]
    assert ("| model | ReLUs | protocol | online s (p10–p90) | wan s (proj.) | online MB / party | rounds "
            "| offline s |") in section
    for model in ("base", "senet_50", "drd_50", "senet_5", "drd_5"):
        for protocol in ("crypten:dealer", "crypten:fss"):
            assert f"| {model} | " in section and f"| {protocol} | " in section
    assert "| drd_5 | 192 | crypten:fss | 0.082 (0.077–0.082) |" in section
    assert "- `crypten:dealer`: 464 B online per kept ReLU and party, 9 round(s) per ReLU layer" in section
    assert "- `crypten:fss`: 16 B online per kept ReLU and party, 1 round(s) per ReLU layer" in section
    assert "![Protocols compared per model" in text
    assert "## Protocols compared" not in write_report(fixture_run(tmp_path / "one"), replot=False).read_text()


@pytest.mark.integration
def test_results_of_older_versions_load_plot_and_report(tmp_path):
    """A results.csv from before the protocol columns (CrypTen `provider`, no offline_s, no client storage) still
    works; the storage figure is skipped."""
    run = fixture_run(tmp_path / "run")
    old = pd.read_csv(run / RESULTS_FILE).drop(columns=["backend", "protocol", "security", "offline_s",
                                                        "client_storage_bytes"])
    old.insert(old.columns.get_loc("threads"), "provider", "tfp")
    old.to_csv(run / RESULTS_FILE, index=False)
    df = load_results(run)
    assert list(df.columns) == RESULT_COLUMNS
    assert set(df["backend"]) == {"crypten"} and set(df["protocol"]) == {"crypten:tfp"}
    assert df["security"].str.startswith("INSECURE").all() and df["offline_s"].isna().all()
    assert {p.stem for p in plot_run(run)} == set(FIGURES) - {"protocol_costs", "storage_vs_relus"}  # one protocol
    assert "**(not secure: benchmark only)**" in write_report(run).read_text()


@pytest.mark.integration
def test_report_tables_and_figures(tmp_path):
    run = fixture_run(tmp_path / "run")
    text = write_report(run).read_text()
    assert "## senet" in text and "## deepreduce" in text and "## baseline" in text
    assert "| senet_5 | 230 | 230 | 90.00 | 100.0 |" in text
    assert "online MB / party | rounds | offline s | offline MB |" in text
    assert "wan s (proj.)" in text
    assert "![Accuracy vs ReLUs" in text
    assert "broken (wan): RuntimeError: boom" in text
    assert (
        "senet − deepreduce" not in text
        and "deepreduce − senet, best accuracy at ≤ N ReLUs (accuracy points): ≤ 230: -10.00 (deepreduce 80.00 % "
        "with 192, senet 90.00 % with 230 ReLUs)" in text
    )


def test_budgets_that_gave_one_model_say_so_in_the_report(tmp_path):
    run = fixture_run(tmp_path / "run")
    twin = load_results(run).query("model == 'drd_50'").assign(model="drd_60", budget=2764)
    append_rows(run / RESULTS_FILE, [ResultRow(**{k: (None if pd.isna(v) else v) for k, v in r.items()})
                                     for r in twin[RESULT_COLUMNS].to_dict("records")])
    text = write_report(run, replot=False).read_text()
    assert "| drd_60 | 2,764 | 2,048 | 95.00 |" in text
    assert "| drd_60 | 2,764 | 2,048 | 95.00 |" in text and text.count("same model as drd_50") == 1


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def series_artists(fig):
    """Each labelled series of a figure: label -> list of (axes index, data line, error-bar container or None)."""
    from matplotlib.container import ErrorbarContainer

    found: dict[str, list] = {}
    for i, ax in enumerate(fig.axes):
        for container in ax.containers:
            if isinstance(container, ErrorbarContainer) and not container.get_label().startswith("_"):
                found.setdefault(container.get_label(), []).append((i, container.lines[0], container))
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                found.setdefault(line.get_label(), []).append((i, line, None))
    return found


def two_by_two(tmp_path):
    """Figures of a two-method x two-protocol sweep (and the baseline), by name."""
    from pibench.report.plots import draw_figures
    from pibench.report.rows import with_series
    from pibench.results import load_layers

    run = fixture_run(tmp_path / "run", protocols=("crypten:dealer", "crypten:fss"))
    results, layers = with_series(load_results(run), load_layers(run))
    return run, results, draw_figures(results, layers)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """two_by_two's run, results and figures, drawn once for the tests that only read them."""
    return two_by_two(tmp_path_factory.mktemp("two_by_two"))


def test_a_method_keeps_one_look_in_every_figure(tmp_path, drawn):
    """A method's colour and marker are the same in every figure of every run, whatever the protocols."""
    from pibench.report.plots import draw_figures
    from pibench.report.rows import with_series
    from pibench.report.style import METHOD_LOOKS
    from pibench.results import load_layers

    run = fixture_run(tmp_path / "run")
    results, layers = with_series(load_results(run), load_layers(run))
    results.loc[results["method"] == "baseline", "accuracy"] = None  # the accuracy figures lack the baseline
    figures = {**draw_figures(results, layers), **{f"two:{k}": v for k, v in drawn[2].items()}}
    looks: dict[str, set] = {}
    drawn_in: dict[str, set] = {}
    for name, fig in figures.items():
        for label, artists in series_artists(fig).items():
            method = label.split(" · ")[0]
            for _, line, _ in artists:
                looks.setdefault(method, set()).add((line.get_color(), line.get_marker()))
            drawn_in.setdefault(label, set()).add(name)
    assert drawn_in["senet"] == {"accuracy_vs_relus", "accuracy_vs_latency", "latency_vs_relus",
                                 "communication_vs_relus", "two:accuracy_vs_relus"}
    for method in ("senet", "deepreduce", "baseline"):
        assert looks[method] == {METHOD_LOOKS[method][:2]}, method
    # overlapping series stay apart: every method its own marker and line style
    styles = {(line.get_marker(), line.get_linestyle()) for line in figures["accuracy_vs_relus"].axes[0].get_lines()
              if line.get_label() in ("senet", "deepreduce")}
    assert len(styles) == 2
    # plain units on the latency axis (no 50m for 0.05 s)
    fig = figures["latency_vs_relus"]
    fig.canvas.draw()
    for ax in fig.axes:
        for label in ax.get_yticklabels():
            if label.get_text():
                float(label.get_text().replace(",", ""))
    assert {ax.get_yscale() for ax in fig.axes} == {"linear"} or len({ax.get_yscale() for ax in fig.axes}) == 1


def test_accuracy_is_drawn_once_per_method_whatever_the_protocols(drawn):
    from pibench.report.style import METHOD_LOOKS

    _, _, figures = drawn
    series = series_artists(figures["accuracy_vs_relus"])
    assert sorted(series) == ["baseline", "deepreduce", "senet"]  # no protocol: one series per method
    for method, artists in series.items():
        ((_, line, _),) = artists
        assert (line.get_color(), line.get_marker()) == METHOD_LOOKS[method][:2]
    # each model once: DeepReDuce's two models, not four points on top of each other
    drd = [line for line in figures["accuracy_vs_relus"].axes[0].get_lines()
           if line.get_color() == METHOD_LOOKS["deepreduce"][0]]
    assert sum(len(line.get_xdata()) for line in drd) == 2


def test_latency_has_error_bars_and_names_the_protocol(drawn):
    from pibench.report.style import METHOD_LOOKS, PROTOCOL_LINES

    _, results, figures = drawn
    series = series_artists(figures["latency_vs_relus"])
    assert {"deepreduce · crypten:dealer", "deepreduce · crypten:fss", "senet · crypten:dealer",
            "senet · crypten:fss"} <= set(series)
    for label, artists in series.items():
        if label == "linear layers only":
            continue
        method, protocol = label.split(" · ")
        for panel, line, bars in artists:
            assert line.get_color() == METHOD_LOOKS[method][0]  # the method's colour under every protocol
            assert line.get_linestyle() == {"crypten:dealer": "-", "crypten:fss": "--"}[protocol]
            assert PROTOCOL_LINES[:2] == ["-", "--"]
            rows = results[(results["series"] == label) & results["error"].isna()].drop_duplicates("model")
            rows = rows.sort_values("relus")
            segments = bars.lines[2][0].get_segments()  # one vertical bar per model: p10 .. p90
            if panel == 0:  # the measured panel: the bars are the repeats' percentiles
                assert [y for s in segments for y in (s[0][1], s[1][1])] == pytest.approx(
                    [y for pair in zip(rows["latency_s_p10"], rows["latency_s_p90"]) for y in pair])
            else:
                assert all(s[1][1] > s[0][1] for s in segments)


def test_protocol_comparison_figure_only_with_several_protocols(tmp_path, drawn):
    from matplotlib.colors import to_hex

    from pibench.report.plots import draw_figures
    from pibench.report.rows import with_series
    from pibench.report.style import protocol_color

    _, _, figures = drawn
    fig = figures["protocol_costs"]
    legend = fig.legends[0]
    names = [t.get_text() for t in legend.get_texts()]
    assert names == ["crypten:dealer", "crypten:fss"]
    # every bar has its protocol's colour, the legend's
    legend_colors = {to_hex(h.get_facecolor()) for h in legend.legend_handles}
    bars = {to_hex(p.get_facecolor()) for ax in fig.axes for p in ax.patches}
    assert bars == legend_colors == {to_hex(protocol_color(k)) for k in names}
    from matplotlib.container import ErrorbarContainer

    # p10-p90 on the online bars: one error bar per model and protocol
    bars_with_errors = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars_with_errors) == 2 and all(len(c.lines[2][0].get_segments()) == 5 for c in bars_with_errors)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "drd_50 (2,048 ReLUs)" in labels  # the ReLUs kept, not the budget in the name
    assert [t.get_text() for t in fig.axes[-1].get_yticklabels()] == names
    one, layers = with_series(load_results(fixture_run(tmp_path / "one")))
    assert "protocol_costs" not in draw_figures(one, None)


@pytest.mark.integration
def test_client_storage_against_relus_one_series_per_protocol(tmp_path):
    """y is the column in MB, per protocol in its colour and line style; a protocol that stores nothing is named."""
    from matplotlib.lines import Line2D

    from pibench.report.plots import draw_figures
    from pibench.report.rows import with_series
    from pibench.report.style import protocol_color, protocol_line

    run = fixture_run(tmp_path / "run", protocols=("crypten:fss", "crypten:tfp", "crypten:dealer"))
    assert {run / "figures" / f"storage_vs_relus.{ext}" for ext in ("png", "pdf")} <= set(plot_run(run))
    assert (run / "figures" / "storage_vs_relus.pdf").stat().st_size > 1000
    results, _ = with_series(load_results(run))
    (ax,) = draw_figures(results)["storage_vs_relus"].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["crypten:dealer", "crypten:fss"]  # in the protocol table's order; tfp stores nothing
    for key, line in lines.items():
        rows = results[(results["key"] == key) & results["error"].isna()].drop_duplicates("model").sort_values("relus")
        assert list(line.get_xdata()) == list(rows["relus"])
        assert list(line.get_ydata()) == pytest.approx(list(rows["client_storage_bytes"] / 1e6))
        assert line.get_color() == protocol_color(key)
        assert line.get_linestyle() == Line2D([], [], ls=protocol_line(key)).get_linestyle()
    assert list(lines["crypten:fss"].get_ydata()) == pytest.approx([245 * r / 1e6 for r in (192, 230, 2048, 2304,
                                                                                             4608)])
    assert [t.get_text() for t in ax.texts] == ["store nothing: crypten:tfp"]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"  # 0.047 to 1.13 MB: over a decade
    assert ax.get_ylabel() == "client storage per inference (MB)"


@pytest.mark.parametrize("storage", ["empty", "zero", "missing"])
def test_storage_figure_is_skipped_without_client_storage(tmp_path, storage):
    from pibench.report.plots import draw_figures
    from pibench.report.rows import with_series

    results = load_results(fixture_run(tmp_path / "run", protocols=("crypten:dealer", "crypten:fss")))
    if storage == "missing":
        results = results.drop(columns=["client_storage_bytes"])
    else:
        results["client_storage_bytes"] = None if storage == "empty" else 0
    figures = draw_figures(*with_series(results))
    assert "storage_vs_relus" not in figures and "protocol_costs" in figures


def test_online_and_offline_bytes_are_never_stacked(drawn):
    _, _, figures = drawn
    ax_time, ax_bytes = figures["online_vs_offline"].axes
    assert {p.get_x() for p in ax_bytes.patches} == {0}  # side by side, each bar from zero
    assert [t.get_text() for t in ax_bytes.get_legend().get_texts()] == [
        "online, per party", "offline, client", "offline, server"]
    assert "per inference and party" in ax_bytes.get_xlabel()
    labels = [t.get_text() for t in ax_time.get_yticklabels()]
    assert "drd_5 (192 ReLUs) · crypten:fss" in labels


def test_plot_without_results_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `pibench bench` or `pibench sweep` first"):
        plot_run(tmp_path)


def test_with_several_protocols_colour_and_marker_are_the_method_and_line_style_the_protocol(tmp_path):
    from pibench.report.rows import with_series
    from pibench.report.style import series_styles

    run = fixture_run(tmp_path / "run", protocols=("crypten:dealer", "spu:cheetah"))
    results, _ = with_series(load_results(run))
    styles = series_styles(results)
    assert styles["senet · crypten:dealer"]["color"] == styles["senet · spu:cheetah"]["color"]
    assert styles["senet · crypten:dealer"]["color"] != styles["deepreduce · crypten:dealer"]["color"]
    assert styles["senet · crypten:dealer"]["marker"] == styles["senet · spu:cheetah"]["marker"]
    assert styles["senet · crypten:dealer"]["ls"] != styles["senet · spu:cheetah"]["ls"]
    one, _ = with_series(load_results(fixture_run(tmp_path / "one")))
    single = series_styles(one)
    assert len({s["color"] for s in single.values()}) == 3 and len({s["marker"] for s in single.values()}) == 3


def test_a_narrow_log_axis_still_has_tick_labels():
    import matplotlib.pyplot as plt

    from pibench.report.style import set_scale

    fig, ax = plt.subplots(figsize=(1.2, 2))
    values = pd.Series([0.012, 0.5, 1.9])
    ax.barh([0, 1, 2], values)
    set_scale([ax], values, "x")
    fig.canvas.draw()
    low, high = ax.get_xlim()
    labels = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
    # plain seconds, not SI prefixes (10m would read as ten minutes); the smallest value lies above a labelled tick
    assert labels == ["0.01", "0.1", "1", "10"]
    plt.close(fig)
