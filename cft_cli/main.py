"""The `cft` command line. Heavy imports happen inside commands, so `cft --help` is instant."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup


class FriendlyErrors(TyperGroup):
    """The one error style of the CLI: a user's mistake prints `error: ...` (a few lines that name
    the file, field, value or rows) and exits 2; `cft --debug` or CFT_DEBUG=1 shows the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 (sorted into user errors and our bugs just below)
            from schemas.errors import user_error_message

            message = user_error_message(e)
            if message is None or os.environ.get("CFT_DEBUG") == "1":
                raise
            from rich.markup import escape

            Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}", highlight=False)
            raise typer.Exit(2) from None


# Plain help (no rich boxes): flags read `--include-history / --no-include-history`, not `<bool>`.
_TYPER = {"no_args_is_help": True, "rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(help="CFT recommender pipeline.", pretty_exceptions_enable=False, cls=FriendlyErrors, **_TYPER)
data_app = typer.Typer(help="Data stage: ingest, validate, build sequences.", **_TYPER)
app.add_typer(data_app, name="data")
# soft_wrap: paths and command hints are printed whole, for copy and paste (rich would otherwise
# break them at the terminal width, 80 columns when the output is not a terminal); tables still fit.
# markup off: what is printed holds titles, ids, paths and reasons from users' data, and rich would
# read "Movie [remastered]" as a style tag and drop it, or fail on a "[/]"; labels are styled by
# `labelled` instead.
console = Console(soft_wrap=True, markup=False)


def labelled(label: str, text: str) -> Text:
    """`label` in yellow (a warning or note), then `text` as it is."""
    return Text.assemble((label, "yellow"), " ", text)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"cft {version('cft-rec')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show third-party progress bars and warnings.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of input errors too (or CFT_DEBUG=1).")] = False,
) -> None:
    """CFT recommender pipeline."""
    from tasks.quiet import quiet_third_parties, verbose_third_parties

    if debug:
        os.environ["CFT_DEBUG"] = "1"
    if verbose:
        verbose_third_parties()
    else:
        quiet_third_parties()

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML profile, e.g. configs/demo.yaml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: section.field=value (repeatable).")]


def _summary(manifest: dict, seq_path: Path, reused: bool) -> Table:
    s = manifest["stats"]
    values = [f"{v:,}" for v in (s["users"], s["items"], s["interactions"], s["samples_train"],
                                 s["samples_valid"], s["samples_test"])] + [f"{s['mean_history_train']:.2f}"]
    window = [manifest.get("settings", {}).get(end) for end in ("window_start", "window_end")]
    caption = None if window == [None, None] else "window: " + " to ".join(
        "..." if t is None else f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M} UTC" for t in window)
    t = Table(title=f"sequences: {seq_path}" + (" (reused)" if reused else ""), caption=caption)
    for col, value in zip(("users", "items", "interactions", "train", "valid", "test", "mean history (train)"),
                          values, strict=True):
        t.add_column(col, justify="right", min_width=len(value))  # a narrow terminal wraps names, never cuts numbers
    t.add_row(*values)
    return t


def load_checked_config(config: Path, set_: list[str] | None):
    """The profile, with its MLflow server (when it tracks to one) asked whether it answers before
    any stage runs: commands that prepare data and train first would otherwise find out when they
    log, after the work and the retries (`tasks.servers`)."""
    from schemas.config import load_config
    from tasks.servers import check_tracking_server
    from tasks.tracking import tracking_uri

    cfg = load_config(config, set_)
    if cfg.tracking.enabled:
        check_tracking_server(tracking_uri(cfg, create=False))
    return cfg


@data_app.command("prepare")
def data_prepare(config: ConfigOpt = Path("configs/demo.yaml"), set_: SetOpt = None) -> None:
    """Ingest the configured source, validate it, and build train/valid/test records."""
    from schemas.config import load_config
    from tasks.data import prepare

    cfg = load_config(config, set_).data
    ingested, sequences, manifest = prepare(cfg)
    console.print(f"ingested: {ingested.path}" + (" (reused)" if ingested.reused else ""))
    if left_out := _left_out_at_ingest(ingested.path):
        console.print(f"left out at ingest: {left_out}")
    console.print(_summary(manifest, sequences.path, sequences.reused))


def _left_out_at_ingest(ingested: Path) -> str:
    """What the ingest manifest's `dropped` counts, as one line ("" for nothing): the warnings that
    said it scroll by, and a reused folder says nothing again."""
    import json

    dropped = json.loads((ingested / "manifest.json").read_text()).get("dropped") or {}
    first = {"items": 0, "interactions": 1}  # (then any other count, e.g. duplicates' "other_rating")
    return "; ".join(f"{what.replace('_', ' ')}: " + ", ".join(
        f"{counts[unit]:,} {unit.replace('_', ' ')}" for unit in sorted(counts, key=lambda u: (first.get(u, 2), u)))
        for what, counts in dropped.items())


def _prepare_data(cfg):
    from tasks.data import prepare

    return prepare(cfg.data)


@app.command("train")
def train(config: ConfigOpt = Path("configs/demo.yaml"), set_: SetOpt = None) -> None:
    """Prepare the data (reused when unchanged) and fine-tune the model with the configured objective.

    Multi-process: `torchrun --nproc_per_node N --master_addr 127.0.0.1 -m cft_cli train -c ...`.
    """
    from tasks.chain import train_model
    from tasks.tracking import run_link
    from tasks.training import is_rank_zero

    cfg = load_checked_config(config, set_)
    _, sequences, _ = _prepare_data(cfg)
    out = train_model(cfg, sequences)  # as `cft run` trains: from the champion with `model.source: champion`
    if is_rank_zero():  # lines, not a table: the run id and the folder stay whole to copy
        s = out.summary
        best = "-" if s["best_eval_loss"] is None else f"{s['best_eval_loss']:.4f}"
        console.print(f"training{' (reused)' if out.reused else ''}: {cfg.train.objective} from "
                      f"{s['warm_start'] or 'the base model'}, {s['global_step']} steps, best valid loss {best}\n"
                      f"MLflow run: {run_link(cfg, s['mlflow_run_id'])}\nmodel: {out.model_dir}",
                      highlight=False, soft_wrap=True)


def metrics_console_table(title: str, metrics: dict[str, float], ks) -> Table:
    """The evaluation's metrics table (`tasks.evaluation.metrics_rows`) for the terminal."""
    from tasks.evaluation import metrics_rows

    header, rows = metrics_rows(metrics, ks)
    t = Table(title=title)
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    return t


@app.command("evaluate")
def evaluate(
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder; default: the one `cft train` makes for this config.")] = None,
    model: Annotated[str, typer.Option(help="A registered version instead, e.g. models:/cft-ml-100k/3 or "
                                            "models:/cft-ml-100k@champion: its model on this profile's data "
                                            "window (to compare versions trained on different windows).")] = "",
) -> None:
    """Evaluate a model folder on the configured split: HR/NDCG@K over the full catalogue."""
    from schemas.errors import InputError
    from tasks.evaluation import evaluate as evaluate_stage

    cfg = load_checked_config(config, set_)
    if model and model_dir is not None:
        raise InputError("give --model or --model-dir, not both")
    if model:  # the version's own folder when it is on this machine, else downloaded once
        from tasks.registry import download_version_model, llm_version
        from tasks.tracking import tracking_uri

        model_dir = download_version_model(cfg, llm_version(model, tracking_uri(cfg, create=False)))
    if model_dir is None:  # train (or reuse the finished training of) this config, and log the evaluation
        from tasks.chain import train_and_evaluate

        result = train_and_evaluate(cfg).evaluation
    else:
        _, sequences, _ = _prepare_data(cfg)
        result = evaluate_stage(cfg, model_dir, sequences.path)
    title = f"{cfg.eval.split} metrics: {result.path}" + (" (reused)" if result.reused else "")
    console.print(metrics_console_table(title, result.metrics, cfg.eval.ks))
    from tasks.evaluation import diagnostics_text, seconds_text

    console.print(diagnostics_text(result.diagnostics), highlight=False)
    console.print(seconds_text(result.seconds) + (" when it was computed" if result.reused else ""), highlight=False)


@app.command("run")
def run(
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
) -> None:
    """The whole pipeline in-process as the Prefect flow `cft`: ingest -> validate -> build ->
    train -> evaluate -> register -> gate. Finished stages are reused (content-addressed
    outputs). Without PREFECT_API_URL, Prefect starts a temporary local server."""
    # Prefect's temporary server would otherwise send a telemetry heartbeat while its fresh
    # SQLite database is still being migrated ("database is locked" tracebacks on first runs).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server gets 20 s to start by default; a busy 2-core machine needs more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    cfg = load_checked_config(config, set_)  # validated before Prefect starts, and passed as is
    from flows.cft import cft_pipeline
    from tasks.servers import check_prefect_api

    check_prefect_api()

    out = cft_pipeline(profile=str(config), config=cfg)
    console.print(out["summary"])  # (its "MLflow run:" line says how to open the run in the UI)
    if out["registered"]:
        hint = recommend_hint(config, set_ or [], out["registered"]["name"], _example_history(cfg))
        console.print(f"\nRecommend:  {hint}", highlight=False)


def recommend_hint(config: Path, overrides: list[str], name: str, history: list[str]) -> str:
    """The `cft recommend` command line for the champion just registered, quoted for a POSIX shell
    (titles hold quotes, commas, `$`), with the run's own --set overrides: they may name another
    data root, and so another MLflow store."""
    import shlex

    sets = [arg for value in overrides for arg in ("--set", value)]
    return shlex.join(["cft", "recommend", "-c", str(config), *sets, "--model", f"models:/{name}@champion", *history])


def _example_history(cfg) -> list[str]:
    """Two history titles of a test record of this dataset, for the printed `cft recommend` hint."""
    from tasks.data import prepare

    _, sequences, _ = prepare(cfg.data)
    import pyarrow.parquet as pq

    # The first record only: the whole column of a 25M-rating window's test split took 13 s and 5 GB.
    first = next(pq.ParquetFile(sequences.path / "test.parquet").iter_batches(batch_size=1, columns=["history_titles"]),
                 None)
    return first.column(0)[0].as_py()[-2:] if first is not None and first.num_rows else []


@app.command("compare")
def compare(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Two or more sides: MLflow run ids, "
                                              "registered versions (models:/NAME/3, models:/NAME@champion) or "
                                              "evaluation folders; a side with several seeds is comma-separated.")],
    metric: Annotated[list[str] | None, typer.Option("--metric", help="HR@K / NDCG@K per method (repeat).")] = None,
    level: Annotated[float, typer.Option(min=0.5, max=0.999, help="Interval confidence level.")] = 0.95,
    out_dir: Annotated[Path, typer.Option(help="Where the table (compare.md, .json) and plot go.")] = Path("compare"),
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
) -> None:
    """Compare evaluated runs row by row: differences in HR/NDCG@K, history effect and target NLL
    against the first side, with bootstrap intervals and a verdict per quantity (tasks/compare.py)."""
    import tempfile

    from schemas.errors import InputError
    from tasks.compare import compare as compare_sides
    from tasks.compare import load_side, markdown, plot, ranking_differences
    from tasks.tracking import tracking_uri

    if len(runs) < 2:
        raise InputError("compare needs at least two sides (run ids, registered versions or evaluation folders)")
    cfg = load_checked_config(config, set_)
    metrics = metric or ["HR@10", "NDCG@10"]
    with tempfile.TemporaryDirectory() as tmp:
        uri = tracking_uri(cfg, create=False)  # read only: runs are looked up, nothing is logged
        sides = [load_side(spec, cfg.eval.split, uri, metrics, Path(tmp)) for spec in runs]
    tables = [compare_sides(sides[0], side, level=level) for side in sides[1:]]
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every comparison is made: bad input writes nothing
    texts = []
    for i, table in enumerate(tables, 1):
        text = markdown(table, runs[0], runs[i], level, ranking_differences(sides[0], sides[i]))
        texts.append(text)
        console.print(text, highlight=False, soft_wrap=True)
        plot(table, out_dir / f"compare-{i}.png", f"{runs[i]} - {runs[0]}")
        table.to_json(out_dir / f"compare-{i}.json", orient="records", indent=1)
    (out_dir / "compare.md").write_text("\n\n".join(texts) + "\n")
    console.print(f"written: {out_dir / 'compare.md'} and plots")


@app.command("replay")
def replay(
    config: ConfigOpt = Path("configs/replay-ml100k.yaml"),
    set_: SetOpt = None,
    periods: Annotated[int, typer.Option(help="How many periods (pipeline runs).")] = 5,
    every: Annotated[str, typer.Option(help="Time between periods: 30d, 2w, 12h.")] = "30d",
    start: Annotated[str | None, typer.Option(help="as_of of the first period (ISO-8601); default: the last period sees all the data.")] = None,
    out: Annotated[Path | None, typer.Option(help="Timeline JSON; default <data_root>/replay/<dataset>-timeline.json.")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the timeline as a Markdown report here.")] = None,
) -> None:
    """Replay the dataset's timeline: move data.as_of by EVERY, run the whole pipeline each period
    (warm start, gate with the popularity floor), write the timeline, a plot and an MLflow run.
    Periods already in the timeline are skipped, so an interrupted replay resumes."""
    import shlex
    import sys
    from datetime import datetime

    from tasks.replay import plot_timeline
    from tasks.replay import replay as run_replay
    from tasks.replay import report as timeline_report
    from tasks.tracking import log_timeline, run_link

    cfg = load_checked_config(config, set_)
    out = out or cfg.data.data_root / "replay" / f"{cfg.data.name}-timeline.json"
    first = datetime.fromisoformat(start) if start else None
    timeline = run_replay(cfg, periods, every, out, first, say=console.print)
    plot = out.with_suffix(".png")
    plot_timeline(timeline, plot)
    console.print(f"timeline: {out}\nplot: {plot}")
    if cfg.tracking.enabled:
        console.print(f"MLflow run: {run_link(cfg, log_timeline(cfg, timeline, plot))}")
    if report:
        command = "cft " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "cft replay"
        report.parent.mkdir(parents=True, exist_ok=True)
        image = os.path.relpath(plot.resolve(), report.parent.resolve())
        report.write_text(timeline_report(timeline, command) + f"\n![timeline]({image})\n")
        console.print(f"report: {report}")


@app.command("gc")
def gc(
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
) -> None:
    """Remove training folders (models, evaluations) finished a day ago or more that no version
    holding an alias uses (the registry keeps every version's model); the data windows
    (ingested, sequences) that no kept training was built from, except the newest of each
    dataset; what interrupted writes left a day ago or more; unfinished trainings untouched for a
    week; the registry's downloads and gate caches of versions that are not champion; the
    downloads and mirrors of source URLs that no data folder left was read from, a day old or
    more, except the profile's own; and, with
    `registry.keep_versions` set, the registered versions older than the newest N that no alias
    or rollback needs, with their model files. As a flow: `prefect deployment run cft-gc/weekly`."""
    from schemas.config import load_config
    from tasks.gc import collect

    cfg = load_config(config, set_)
    for line in collect(cfg, dry_run=dry_run).lines():
        console.print(line, highlight=False)  # paths as they are


# ------------------------------------------------------------------------------ registry


def _registry_context(config: Path, set_: list[str] | None, model_name: str | None = None):
    """(config, tracking URI, registered model name) for the registry commands. They all need a
    registered model, so a local store that does not exist is the user's error (and is not created)."""
    from schemas.config import load_config
    from schemas.errors import InputError
    from tasks.tracking import missing_store, tracking_uri

    cfg = load_config(config, set_)
    uri = tracking_uri(cfg, create=False)
    if (database := missing_store(uri)) is not None:
        raise InputError(f"there is no tracking store at {database}, so no registered model: "
                         f"run the pipeline first (cft run -c {config}), or point tracking.tracking_uri at your store")
    return cfg, uri, model_name or cfg.registered_model_name()


ReasonOpt = Annotated[str, typer.Option(help="Why (recorded in the registry's champion history).")]
ModelNameOpt = Annotated[str | None, typer.Option(help="Registered model; default cft-<data.name>.")]


def _checked_history(history: list[str]) -> list[str]:
    """Command-line history entries; an entry that is not UTF-8 (the shell passed raw bytes) is
    a user error naming it, not a crash deep in the tokenizer."""
    for i, entry in enumerate(history, 1):
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError:
            shown = entry.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            from schemas.errors import InputError

            raise InputError(f"history entry {i} ({shown}) is not valid UTF-8; check the terminal's encoding") from None
    return history


def _served_model_uri(config: Path, set_: list[str] | None, model: str) -> str:
    """The model to load (`model`, or the champion of the config's registered model), with MLflow
    pointed at the config's tracking and registry store."""
    from tasks.registry import champion_uri, registry_client

    cfg, uri, _ = _registry_context(config, set_)
    registry_client(uri)  # (points MLflow's global tracking and registry URIs at the store)
    return model or champion_uri(cfg)


@app.command("recommend")
def recommend(
    history: Annotated[list[str] | None, typer.Argument(metavar="[HISTORY...]", help="The user's history: titles or item ids (your data's own ids), oldest first; none: a new user.")] = None,
    _marker: Annotated[bool, typer.Option("--history", help="Optional marker before the history items.")] = False,
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/cft-ml-100k@champion.")] = "",
    k: Annotated[int, typer.Option("-k", min=1, help="How many items (1 .. catalogue size).")] = 10,
    include_history: Annotated[bool, typer.Option(help="Allow items already in the history.")] = False,
    free_text: Annotated[bool, typer.Option(help="Show titles that match no catalogue item to the model as typed "
                                                 "(default: leave them out and say so).")] = False,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", metavar="ITEM", help="An item never to recommend (a title or item id), e.g. one the user "
                                          "already has; repeat for more.")] = None,
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
) -> None:
    """Top-K catalogue items for a history, from a registered model (the champion by default)."""
    import difflib

    import pandas as pd

    from cft_core.titles import display_title
    from tasks.registry import LoadedPyfunc, takes_exclude

    history = _checked_history(history or [])
    model_uri = _served_model_uri(config, set_, model)
    frame = pd.DataFrame({"history": [history], **({"exclude": [exclude]} if exclude else {})})
    with LoadedPyfunc(model_uri) as loaded:
        if exclude and not takes_exclude(loaded.pyfunc):
            console.print(labelled("note:", f"{model_uri} was registered before models took an `exclude` "
                                   "input: --exclude is ignored"), highlight=False)
        out = loaded.pyfunc.predict(frame, params={"k": k, "exclude_history": not include_history,
                                                   "free_text": free_text})
    row = out.iloc[0]
    catalogue = loaded.model.catalogue
    shown = [display_title(t) for t in catalogue.titles] if row["unmatched"] else []
    for title in row["unmatched"]:
        close = difflib.get_close_matches(title, shown, n=3, cutoff=0.6)
        hint = f"; close: {', '.join(map(repr, close))}" if close else ""
        use = "shown to the model as typed" if free_text else "left out (--free-text to use it as typed)"
        console.print(labelled("not in the catalogue:", f"{title!r}, {use}{hint}"), highlight=False)
    if not history:
        console.print("no history: the no-history ranking, as for a new user", highlight=False)
    elif len(row["unmatched"]) == len(history) and not free_text:
        console.print("no item of the history is in the catalogue: the no-history ranking, as for a new user",
                      highlight=False)
    t = Table(title=f"{model_uri}: top {len(row['item_ids'])}")
    for col in ("rank", "item id", "title", "score"):
        t.add_column(col)
    for rank, (item, title, score) in enumerate(zip(row["item_ids"], row["titles"], row["scores"], strict=True), 1):
        t.add_row(str(rank), str(item), title, "popular" if score is None else f"{score:.3f}")
    console.print(t)
    if filled := sum(score is None for score in row["scores"]):
        console.print(labelled("note:", f"the last {filled}, marked popular, are the most frequent training items: "
                               "the model's beams gave no more distinct items (eval.backfill)"), highlight=False)
    if (shown := len(row["item_ids"])) < k:
        console.print(labelled("note:", f"{shown} of the {k} items asked: {_why_fewer(loaded)}"), highlight=False)


def _why_fewer(loaded) -> str:
    """Why a registered model answered fewer items than asked (`cft recommend`)."""
    ranker = getattr(loaded.batching, "ranker", None)
    if ranker is not None and ranker.settings.method == "constrained" and ranker.settings.backfill == "none":
        return (f"constrained decoding returns at most its {ranker.settings.generation.num_return_sequences} "
                "beams' distinct items, fewer when its search starves; this version was registered without "
                "eval.backfill, which fills the list with popular items (a wider search: "
                "eval.constrained_search_beams, set at evaluation; docs/evaluation.md)")
    return "the catalogue has no more items this history may get"


@app.command("recommend-all")
def recommend_all(
    out: Annotated[Path | None, typer.Option(help="Parquet file to write (replaced whole when done); default "
                                                  "<data_root>/recommendations/cft-<data.name>.parquet.")] = None,
    model: Annotated[str, typer.Option(help="Model URI; default the champion, models:/cft-<data.name>@champion.")] = "",
    k: Annotated[int, typer.Option("-k", min=1, help="Items per user.")] = 10,
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
) -> None:
    """Top-K for every user of the profile's data, from their newest history, into one Parquet
    file: the batch job beside `cft serve` (tasks/batch.py; the cft-batch flow runs it too)."""
    from schemas.config import load_config
    from tasks import batch

    done, exact, version = batch.run(load_config(config, set_), model, k, out)
    label = model or "the champion"
    console.print(f"{done.users} users: top {k} from {label}" + (f" (version {version})" if version else f" ({exact})")
                  + f" -> {done.path}", highlight=False, soft_wrap=True)
    if done.unknown_items:
        console.print(labelled("left out:", f"{done.unknown_items} history item(s) the model's catalogue lacks "
                      f"(newer than its data window, or dropped by its k-core); {done.users_without_history} user(s) with none it knows, "
                      "ranked as new users"), highlight=False)
    if done.users_short:
        console.print(labelled("note:", f"{done.users_short} user(s) got fewer than {k} items (a constrained model "
                                        "returns at most its beams' distinct items; or the catalogue has no more)"),
                      highlight=False)
    if not done.excluded_seen:
        console.print(labelled("note:", f"{exact} was registered before models took an `exclude` input: only "
                      "each user's newest history is left out of their recommendations, not all they have"),
                      highlight=False)


@app.command("serve")
def serve(
    model: Annotated[str, typer.Option(help="Model URI; default the champion, models:/cft-<data.name>@champion.")] = "",
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    max_batch: Annotated[int, typer.Option(min=1, help="Histories per shared generation call.")] = 16,
    max_queue: Annotated[int, typer.Option(min=1, help="Waiting requests before new ones get 503.")] = 64,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a batch that is not full waits "
                                                           "for more requests.")] = 50,
    follow_every: Annotated[float, typer.Option(min=0, help="Seconds between checks of the alias served "
                                                          "(models:/NAME@ALIAS): when it moves, the new version "
                                                          "is loaded and served without a restart; 0: never.")] = 30,
    wait: Annotated[bool, typer.Option(help="Start even when no version has the alias yet, answering 503 "
                                            "until one has (a server started before the first run).")] = False,
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve a registered model over HTTP: POST /recommend, MLflow's POST /invocations, GET /health, GET /metrics.
    Concurrent requests share generation calls; a full queue answers 503; served by alias (the
    champion by default), a new champion serves without a restart (cft_cli/server.py)."""
    from cft_cli.server import serve as run_server
    from cft_cli.stack import check_listenable
    from schemas.errors import InputError

    check_listenable(host, port, "--port")
    if wait and not follow_every:
        raise InputError("--wait needs the alias checked: --follow-every must be above 0")
    model_uri = _served_model_uri(config, set_, model)
    # The served model reads these (cft_core.serving.ServingSettings.from_env).
    os.environ["CFT_SERVE_MAX_BATCH"] = str(max_batch)
    os.environ["CFT_SERVE_MAX_QUEUE"] = str(max_queue)
    os.environ["CFT_SERVE_BATCH_WAIT_MS"] = str(batch_wait_ms)
    console.print(f"serving {model_uri} on http://{host}:{port} (POST /recommend, POST /invocations, GET /health, GET /metrics)")
    run_server(model_uri, host, port, follow_every, wait)


@app.command("promote")
def promote(
    version: Annotated[str, typer.Option(help="Registered model version to make champion.")],
    reason: ReasonOpt,
    model_name: ModelNameOpt = None,
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
) -> None:
    """Override the gate: make VERSION the champion, recording the reason."""
    from cft_cli.deploy import promotion_slot
    from tasks.registry import challenger_left_note, check_reason
    from tasks.registry import promote as promote_version

    check_reason(reason, "a manual promotion")  # (before waiting for a slot)
    cfg, uri, name = _registry_context(config, set_, model_name)
    with promotion_slot():  # on a Prefect server, one at a time with the gates of every worker
        left = promote_version(cfg, name, version, reason, uri)
    console.print(f"{name}: champion -> version {version} ({reason})")
    if left:
        console.print(challenger_left_note(name, left), highlight=False)


@app.command("rollback")
def rollback(reason: ReasonOpt, model_name: ModelNameOpt = None,
             config: ConfigOpt = Path("configs/demo.yaml"), set_: SetOpt = None) -> None:
    """Undo the last change of champion (again: further back), recording the reason."""
    from cft_cli.deploy import promotion_slot
    from tasks.registry import check_reason
    from tasks.registry import rollback as rollback_champion

    check_reason(reason, "a rollback")
    cfg, uri, name = _registry_context(config, set_, model_name)
    with promotion_slot():
        target = rollback_champion(cfg, name, reason, uri)
    console.print(f"{name}: champion -> version {target} (rollback: {reason})")


@app.command("versions")
def versions(model_name: ModelNameOpt = None, config: ConfigOpt = Path("configs/demo.yaml"), set_: SetOpt = None,
             history: Annotated[int, typer.Option(min=0, help="Entries of the champion history to show.")] = 10) -> None:
    """The registered model's versions, newest first (kind, when, data window, what the gate
    measured and decided, aliases), then who made which version champion, when and why."""
    from tasks.registry import registry_client, versions_summary

    _, uri, name = _registry_context(config, set_, model_name)
    rows, changes = versions_summary(registry_client(uri), name)
    console.print(f"{name}: {len(rows)} version(s), newest first", highlight=False)
    width = max((len(r.version) for r in rows), default=1) + 1
    for r in rows:
        held = f"[{', '.join(r.aliases)}]" if r.aliases else ""
        judged = f"{r.decision}: {r.gate}" if r.decision else ""
        if r.training_of:  # the same training registered again, ranked another way (eval settings)
            judged += f" (v{r.training_of}'s training, ranked otherwise)"
        console.print(f"  {'v' + r.version:<{width}}  {r.kind:<10}  {r.created} UTC  data {r.data:<16}  {held:<13}  "
                      f"{judged}".rstrip(), highlight=False)
    if changes and history:
        console.print("champion history, newest first:")
        for c in changes[:history]:
            via = f" via {c['via']}" if c.get("via") else ""
            console.print(f"  {c['at']}  v{c['version']}  {c['action']} by {c['by']}{via}: {c['reason']}", highlight=False)


# ------------------------------------------------------------------------------ deployments

@app.command("deploy")
def deploy_command(
    pool: Annotated[str, typer.Option(help="Work pool the deployments go to; created when missing.")],
    pool_type: Annotated[str, typer.Option(help="Worker type of the pool when it is created: process, docker, "
                                                "kubernetes, ... (an existing pool keeps its own).")] = "process",
    project_dir: Annotated[str | None, typer.Option(
        show_default="this project's folder",
        help="Folder the worker runs the flows in, on the worker's machine or in its image (e.g. /app).")] = None,
) -> None:
    """Deploy prefect.yaml's deployments to the Prefect server at PREFECT_API_URL, in work pool
    POOL, with the promotion concurrency limit; for a team's server (`cft stack up` deploys the
    local stack itself). Run again after editing prefect.yaml."""
    from prefect.settings import get_current_settings

    from cft_cli.deploy import PROJECT_ROOT, deploy_project, deployments
    from cft_cli.unresponsive import NAME as UNRESPONSIVE
    from schemas.errors import InputError
    from tasks.servers import check_prefect_api

    api = get_current_settings().api.url
    if not api:  # prefect would deploy to a temporary server of its own, gone when it exits
        raise InputError("cft deploy needs your Prefect server: set PREFECT_API_URL (e.g. http://prefect.example:4200/api); "
                         "for one machine, `cft stack up` starts a server and deploys to it")
    check_prefect_api()
    project_dir = project_dir or str(PROJECT_ROOT)
    silent_s = deploy_project(dict(os.environ), api, pool, project_dir, pool_type=pool_type)
    console.print(f"deployed to pool {pool} of {api} (flows run in {project_dir}):\n  "
                  + "\n  ".join(sorted(deployments(api, pool))), highlight=False)
    console.print(f"a run silent for {silent_s:.0f} s (its machine lost) is set Crashed: automation {UNRESPONSIVE!r}",
                  highlight=False)


@app.command("alerts")
def alerts_command(
    url: Annotated[str | None, typer.Argument(
        envvar="CFT_ALERT_URL", show_default=False,
        help="Where to POST {\"text\": ...} when a run fails or no worker takes it: a Slack, Google Chat or Mattermost incoming webhook, "
             "or your own endpoint (also from $CFT_ALERT_URL, which keeps it out of your shell's history).")] = None,
    off: Annotated[bool, typer.Option("--off", help="Remove the alerts instead.")] = False,
) -> None:
    """Be told when a run of the project's flows fails, crashes or times out (a scheduled retrain,
    the nightly batch, ...), or waits in vain for a worker: a webhook block and two automations on
    the Prefect server at PREFECT_API_URL, which the server runs. Run again to change the URL."""
    from prefect.settings import get_current_settings

    from cft_cli import alerts
    from schemas.errors import InputError
    from tasks.servers import check_prefect_api

    if not off and not (url or "").startswith(("https://", "http://")):
        raise InputError(f"cft alerts needs the URL to POST to (http:// or https://), as its argument or in "
                         f"$CFT_ALERT_URL; got {url!r}" if url else "cft alerts needs the URL to POST to, as its "
                         "argument or in $CFT_ALERT_URL (or --off to remove the alerts)")
    api = get_current_settings().api.url
    if not api:  # a temporary server would take the automation with it when this command exits
        raise InputError("cft alerts needs your Prefect server: set PREFECT_API_URL (`cft stack up` prints it)")
    check_prefect_api()
    if off:
        console.print(f"removed {alerts.remove_alerts()} automation(s) named {alerts.FAILED!r} or {alerts.LATE!r} "
                      f"and the block {alerts.BLOCK!r} from {api}", highlight=False)
        return
    failed, late = alerts.install_alerts(url)
    console.print(f"{api}: the webhook block {alerts.BLOCK!r} gets a message when a flow run of {', '.join(alerts.FLOWS)} "
                  f"ends {', '.join(alerts.STATES)} (automation {alerts.FAILED!r}, {failed}) or has waited "
                  f"{alerts.waited(alerts.LATE_WAIT_S)} past its start for a worker (automation {alerts.LATE!r}, {late})",
                  highlight=False)


# ------------------------------------------------------------------------------ local stack

stack_app = typer.Typer(help="Local Prefect server + worker + MLflow server on 127.0.0.1.", **_TYPER)
app.add_typer(stack_app, name="stack")
DataRootOpt = Annotated[Path, typer.Option(help="Data root; the stack keeps its state in <data-root>/stack.")]


@stack_app.command("up")
def stack_up(
    data_root: DataRootOpt = Path("data"),
    prefect_port: Annotated[int | None, typer.Option(min=1, max=65535, show_default="4200, or the port it runs on",
                                                     help="Port of the Prefect server.")] = None,
    mlflow_port: Annotated[int | None, typer.Option(min=1, max=65535, show_default="5000, or the port it runs on",
                                                    help="Port of the MLflow server.")] = None,
    worker: Annotated[bool, typer.Option(help="Start a process worker.")] = True,
    serve: Annotated[Path | None, typer.Option(help="Also serve this profile's champion (cft serve --wait): "
                                                    "503 until a run registers one, then each new champion.")] = None,
    serve_port: Annotated[int | None, typer.Option(min=1, max=65535, show_default="8080, or the port it runs on",
                                                   help="Port of the recommender (with --serve).")] = None,
    follow_every: Annotated[float, typer.Option(min=0.1, help="Seconds between the recommender's checks of the "
                                                             "alias it serves (cft serve --follow-every).")] = 30.0,
) -> None:
    """Start the servers, create the work pool, deploy prefect.yaml, start a worker; print URLs.
    Run again, it starts only what has stopped, and keeps what runs on its ports."""
    from cft_cli.deploy import deployments
    from cft_cli.stack import (
        check_ports,
        crash_orphaned_runs,
        deploy,
        running_stack,
        start_recommender,
        start_servers,
        start_worker,
    )
    from schemas.config import load_config

    if serve is not None:
        load_config(serve)  # a mistake in the profile is said now, not in the recommender's log
    stack = running_stack(data_root, prefect_port=prefect_port, mlflow_port=mlflow_port, serve_port=serve_port)
    check_ports(stack, serve=serve is not None)  # before anything starts
    start_servers(stack, say=console.print)
    for run in crash_orphaned_runs(stack):  # before a worker takes runs again
        console.print(f"marked Crashed: flow run {run}, left running when the stack stopped (it held its "
                      "deployment's concurrency slot)")
    deploy(stack)
    console.print(f"deployed: {', '.join(sorted(deployments(stack.prefect_api)))}")
    if worker:
        running = start_worker(stack)
        console.print(f"worker on pool cft-local (log: {stack.log_of('worker')}"
                      + (f"; already running, pid {running.pid})" if running else ")"))
    if serve is not None:
        start_recommender(stack, serve, follow_every_s=follow_every, say=console.print)
    console.print(
        f"\nPrefect UI: {stack.prefect_api.removesuffix('/api')}    MLflow UI: {stack.mlflow_uri}\n"
        f"In your shell:\n  export PREFECT_API_URL={stack.prefect_api} MLFLOW_TRACKING_URI={stack.mlflow_uri}\n"
        f"  prefect deployment run cft/full-pipeline --param profile={serve or 'configs/smoke.yaml'} --watch\n"
        + (f"  curl -s {stack.recommender_url}/health\n" if serve is not None else "")
        + f"Stop: cft stack down --data-root {data_root}")


@stack_app.command("down")
def stack_down(data_root: DataRootOpt = Path("data")) -> None:
    """Stop what `cft stack up` started (and only that)."""
    from cft_cli.stack import Stack, down

    if not down(Stack(data_root), say=console.print):
        console.print("nothing to stop")


@stack_app.command("status")
def stack_status(data_root: DataRootOpt = Path("data")) -> None:
    """Which of the stack's processes run, and whether its servers answer. Exit status (for a
    health check): 0 when every process runs and every server answers, 1 when one has stopped or
    does not answer, 3 when nothing runs."""
    from cft_cli.stack import Stack, status

    processes = status(Stack(data_root))
    if not any(p.running for p in processes.values()):
        console.print(f"stack: not running (data root {data_root}); start it with `cft stack up`")
        raise typer.Exit(3)
    for name, p in processes.items():
        if not p.running:
            line = "stopped"
        elif p.url is None:
            line = "running"
        elif p.no_answer is None:
            line = f"running, answers at {p.url}"
        else:
            line = f"running, but {p.url} does not answer ({p.no_answer}); see {Stack(data_root).log_of(name)}"
        console.print(f"{name}: {line}")
    if not all(p.running and p.no_answer is None for p in processes.values()):
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
