"""The CPU study's report: per pair and view the controls, the partition, splits and probes as
tables with intervals, a reading generated from the numbers, and the page ``docs/cpu_study/results.md``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from study_config import RECORD, PairConfig, StudyConfig, _name, _train_pairs, views
from study_plots import draw

from nsync.storage import write_json_atomic


def _f(x, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _cell(row) -> str:
    """``bias-corrected [interval] (raw)`` of one row of a controls table."""
    return f"{_f(row.get('sync_r2_bias_corrected'))} {_ci(row['ci95_low'], row['ci95_high'])} ({_f(row['sync_r2'])})"


def _ci(lo, hi) -> str:
    return "" if lo is None or hi is None or pd.isna(lo) or pd.isna(hi) else f"[{lo:.3f}, {hi:.3f}]"


#: Source layers by relative depth (0 the embeddings, 1 the last block), for the subspace's profile.
BANDS = (("early", 0.0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("late", 2 / 3, 1.01))


def _by_band(depths: list[float], values: list, reduce) -> dict[str, float | None]:
    """``reduce`` of ``values`` (one per source layer, None left out) within each depth band."""
    out = {}
    for band, lo, hi in BANDS:
        kept = [v for x, v in zip(depths, values) if lo <= x < hi and v is not None]
        out[band] = float(reduce(kept)) if kept else None
    return out


def _per_direction(result) -> str:
    """``; SyncR² per direction, ...``: each direction's bias-corrected SyncR², interval (from its
    own replicates) and raw value, for a fit of several directions whose file holds them."""
    ds = result.directions
    if len(ds) < 2 or any(d.sync_r2_ci95 is None for d in ds.values()):
        return ""
    return "; SyncR² per direction, bias-corrected [95% CI] (raw): " + ", ".join(
        f"{name} {_f(d.sync_r2_bias_corrected)} {_ci(*d.sync_r2_ci95)} ({_f(d.sync_r2)})" for name, d in ds.items())


class Report:
    """results.md and the PNGs under docs, from whatever stages are finished."""

    def __init__(self, cfg: StudyConfig, timings: dict[str, float]):
        self.cfg, self.timings = cfg, timings
        self.out, self.docs = Path(cfg.out), Path(cfg.docs)
        path = self.docs / RECORD
        self.record: dict = json.loads(path.read_text()) if path.is_file() else {"pairs": {}}

    def _controls(self, folder: Path) -> pd.DataFrame | None:
        path = folder / "controls.csv"
        return pd.read_csv(path) if path.is_file() else None

    def _result(self, folder: Path):
        from nsync.fit import FitResult, RunFolder

        return FitResult.load(folder) if RunFolder(folder).is_complete() else None

    def pair_section(self, name: str, pair: PairConfig) -> tuple[list[str], dict, dict | None]:
        """The pair's markdown (cache, then one block per view), per view with fits the numbers its
        plots need, and the pair's record entry (None unless its cache is complete and every view
        fitted). A pair not complete here (no cache, or a run under way) shows its record when it has
        one: tables and plots keep its last complete run until a new one is done."""
        kept = self.record["pairs"].get(name)
        if not (self.out / name / "cache" / "manifest.json").is_file() and kept is not None:
            note = (f"From `{RECORD}` (written {kept['written']}): this machine holds neither the pair's cache nor its fits; "
                    f"`only=[{name}]` runs it again.")
            return [f"### {name}", "", note, "", *kept["section"]], kept["views"], kept
        lines = [f"### {name}", ""]
        found: dict = {}
        simulated, has_data, simulation_done = self._simulation_line(name, pair)
        lines.append(simulated)
        unfitted = not has_data
        if has_data:
            for source, target, _ in views(pair.models):
                view_lines, view = self.view_section(name, pair, source, target)
                lines += view_lines
                if view is None:
                    unfitted = True
                else:
                    found[f"{source} -> {target}"] = view
        lines.append("")
        if simulation_done and not unfitted:
            entry = {"written": time.strftime("%Y-%m-%d"), "section": lines[2:],
                     "views": {label: {k: v for k, v in view.items() if k != "heatmap"} for label, view in found.items()},
                     "timings": {k: v for k, v in self.timings.items() if k.startswith(f"{name}/")}}
            return lines, found, entry
        if kept is not None:
            note = (f"From `{RECORD}` (written {kept['written']}): the pair's last complete run, shown until the new run under "
                    f"way on this machine is fitted. The new run: {simulated}")
            return [f"### {name}", "", note, "", *kept["section"]], kept["views"], kept
        return lines, found, None

    def _simulation_line(self, name: str, pair: PairConfig) -> tuple[str, bool, bool]:
        """What the pair's cache holds, whether it holds anything to fit and whether it is complete."""
        from nsync.cache import ActivationCache, describe_reply_flags

        cache_dir = self.out / name / "cache"
        planned = pair.episodes * 2
        if not (cache_dir / "manifest.json").is_file():
            return "Not simulated yet.", False, False
        cache = ActivationCache.open(cache_dir)
        if not cache.shards:
            return f"Simulation in progress ({planned} runs planned), no shard written yet.", False, False
        quality = cache.quality()
        pairs = quality["pairs_lag1"]
        done = bool(cache.manifest.get("complete"))
        state = "complete" if done else f"simulation in progress, {planned} planned"
        return (f"{cache.turns['run_id'].nunique()} runs ({state}), "
                f"{int((cache.turns['condition'] == 'interactive').sum())} utterances; pairs at lag 1 per direction: "
                + ", ".join(f"{d} {n}" for d, n in pairs.items()) + f"; replies {describe_reply_flags(quality)}."), True, done

    def view_section(self, name: str, pair: PairConfig, source: str, target: str) -> tuple[list[str], dict | None]:
        """One view (source -> target): the controls table, splits and probes, the reading, the
        coverage check and the smallest detectable difference."""
        from nsync.stats.sample_size import MIN_TEST_EPISODES
        from nsync.fit.results import layer_profile

        folder = self.out / name / _name(source)
        paper, chosen = (self._controls(folder / f"controls_{a}") for a in ("paper_alpha", "chosen_alpha"))
        main = self._result(folder / "controls_chosen_alpha" / "main")
        if chosen is None or main is None:  # main is refitted first: its folder may be gone while a study re-runs it
            return ["", f"{source} -> {target}: fits not run yet.", ""], None
        planned = [*self.cfg.controls, *(f"lag_{k}" for k in self.cfg.lags if k != 1)]  # the runs of controls.plan
        if missing := [c for c in planned if c not in set(chosen["control"])]:  # e.g. after stages=[main]
            return ["", f"{source} -> {target}: controls not fitted yet ({', '.join(missing)}).", ""], None
        # what the plots need, in a form the record can keep (JSON)
        profile = layer_profile(main)
        heatmap = folder / "controls_chosen_alpha" / "main" / "heatmap_A_to_B.png"
        view = {"controls": chosen.loc[chosen["sync_r2"].notna(), ["control", "sync_r2_bias_corrected", "ci95_low", "ci95_high"]]
                .astype({"sync_r2_bias_corrected": float, "ci95_low": float, "ci95_high": float}).to_dict("records"),
                "layer_profile": profile[["direction", "source_layer", "source_depth", "best_r2", "best_target_depth"]]
                .to_dict("records") if len(profile) else None,
                "heatmap": heatmap if heatmap.is_file() else None}
        n_train = {d: int(np.mean(r.n_train)) for d, r in main.directions.items()}
        short = any(n < pair.min_train_pairs for n in n_train.values())
        lines = ["", f"**{source} -> {target}** (training pairs per direction: "
                 + ", ".join(f"{d} {n}" for d, n in n_train.items())
                 + (f"; fewer than the {pair.min_train_pairs} planned" if short else "") + f"{_per_direction(main)})", ""]
        lines += self._controls_table(folder, chosen, paper)
        if "skipped" in chosen:
            lines += [f"\nskipped {r['control']}: {r['skipped']}" for r in chosen[chosen["skipped"].notna()].to_dict("records")]
        checked = [(f"{r['control']} ({alpha})", r["sync_r2"], r["ci95_low"], r["ci95_high"])
                   for alpha, table in (("chosen alpha", chosen), ("paper alpha", paper)) if table is not None
                   for r in table[table["sync_r2"].notna()].to_dict("records")]
        rows, few = [], []
        for run, label, result in self._other_fits(folder):
            if run.startswith(("split_", "probe_")):  # main's own interval is already in the controls table
                checked.append((label, result.sync_r2, *(result.sync_r2_ci95 or (None, None))))
            episodes = result.bootstrap.test_episodes if result.bootstrap else None
            if episodes is not None and episodes < MIN_TEST_EPISODES:
                few.append(f"{label} ({episodes})")
            rows.append(f"| {label} | {_f(result.sync_r2_bias_corrected)} {_ci(*(result.sync_r2_ci95 or (None, None)))} "
                        f"({_f(result.sync_r2)}) | {_train_pairs(result):.0f} | {'' if episodes is None else episodes} |")
        if rows:
            lines += ["", f"Splits (chosen alpha) and probes (every k-th source layer, k = {self.cfg.mlp_source_layer_step}):", "",
                      "| fit | SyncR², bias-corrected [95% CI] (raw) | training pairs per direction | test episodes |",
                      "|---|---|---|---|", *rows]
        lines += self._partition_table(folder)
        view.update(self._partition_numbers(folder))
        lines += ["", self.reading(folder, chosen, paper, main), "", self.coverage_check(checked)]
        if few:
            lines.append(f"\nFewer than {MIN_TEST_EPISODES} test episodes: {', '.join(few)}; there the episode bootstrap's "
                         "95% interval covers less than it says (0.75 at 10 test episodes, 0.61 at 8: experiments/benchmarks/few_test_episodes.py).")
        detectable = self.detectable_difference(chosen)
        if detectable is not None:
            view["detectable"] = detectable
            lines.append(f"\nSmallest difference from the main condition this {source} -> {target} fit detects "
                         f"(80% power, 5% level, median over controls): {detectable:.3f}.")
        return lines, view

    def _controls_table(self, folder: Path, chosen: pd.DataFrame, paper: pd.DataFrame | None) -> list[str]:
        # Each interval stands beside the bias-corrected value it is centred on (raw SyncR² in brackets).
        lines = ["| condition | SyncR², paper alpha 0.1 [95% CI] (raw) | SyncR², chosen alpha [95% CI] (raw) | "
                 "Δ vs main, chosen alpha [95% CI] | CKA |", "|---|---|---|---|---|"]
        by_paper = paper.set_index("control") if paper is not None else None
        for r in chosen[chosen["sync_r2"].notna()].to_dict("records"):
            c = r["control"]
            p = by_paper.loc[c] if by_paper is not None and c in by_paper.index else None
            result = self._result(folder / "controls_chosen_alpha" / c)
            cka = result.sync_cka if result is not None else None
            diff = "" if c == "main" else f"{_f(r.get('diff_bias_corrected'))} {_ci(r['diff_ci95_low'], r['diff_ci95_high'])}"
            lines.append(f"| {c} | {_cell(p) if p is not None else ''} | {_cell(r)} | {diff} | {_f(cka)} |")
        return lines

    def _partition_table(self, folder: Path) -> list[str]:
        """The variance partition of a view: per baseline the source's unique SyncR² with its
        interval and surrogate p-value, and the shares it is made of (at each source layer's target
        chosen on validation, mean over layers, directions and split seeds)."""
        result = self._result(folder / "partition")
        if result is None or not result.partition:
            return []
        step = result.fit_config().data.source_layer_step
        layers = "every source layer" if step == 1 else f"every {step}{ {2: 'nd', 3: 'rd'}.get(step, 'th')} source layer from the embeddings"
        lines = ["", f"Variance partition (chosen alpha, {layers}; SyncR² of this fit {_f(result.sync_r2)}, p {_f(result.sync_r2_p_value)}"
                 f"{_per_direction(result)}). "
                 "p and the null: the unique share of speakers re-paired from other episodes at the same utterance index "
                 "(surrogate pseudo-dyads); above the null: the unique share less the null's median, what this speaker "
                 "adds beyond what any speaker at that point of a conversation adds:", "",
                 "| beyond | unique SyncR² [95% CI] | p | null median / 95th pct | above the null | shared | baseline alone | source and baseline |",
                 "|---|---|---|---|---|---|---|---|"]
        several = len(result.directions) > 1
        for name, p in result.partition.items():
            # a view of several directions: the pooled row, then each direction's with its own interval
            rows = [(name, p)] + ([(f"{name}, {d}", r.partition[name]) for d, r in result.directions.items()] if several else [])
            for label, q in rows:
                v, null = q.values, q.unique_null or {}
                above = v["unique"] - null["median"] if v.get("unique") is not None and null.get("median") is not None else None
                lines.append(f"| {label} | {_f(v['unique'])} {_ci(*(q.ci95.get('unique') or (None, None)))} | {_f(q.unique_p_value)} | "
                             f"{_f(null.get('median'))} / {_f(null.get('p95'))} | {_f(above)} | {_f(v['shared'])} | {_f(v['baseline'])} | {_f(v['joint'])} |")
        return lines

    def _partition_numbers(self, folder: Path) -> dict:
        """What the partition's plots need, in a form the record keeps: the unique share by source
        layer depth per baseline and direction, and SyncR² and the unique shares by utterance index."""
        result = self._result(folder / "partition")
        if result is None or not result.partition:
            return {}
        profile, course = [], []
        for direction, d in result.directions.items():
            series = [("SyncR²", d.time_course)] + [(f"unique beyond {b}", p.time_course) for b, p in d.partition.items()]
            for b, p in d.partition.items():
                profile += [{"direction": direction, "baseline": b, "source_depth": x, "unique": u}
                            for x, u in zip(result.source_depth, p.by_source_layer["unique"])]
            for name, tc in series:
                if tc is not None:
                    course += [{"direction": direction, "series": name, "utterance": u, "value": v, "low": ci[0] if ci else None,
                                "high": ci[1] if ci else None} for u, v, ci in zip(tc.utterance, tc.value, tc.ci95)]
        return {"unique_profile": profile, "time_course": course}

    def subspace_entry(self, name: str, pair: PairConfig) -> dict | None:
        """What is synchronised in a pair, from each view's main fit at the chosen alpha: per direction
        the dimensionality of synchrony (overall and by layer band), its alignment with the source's
        leading components and what the shared dimensions track; and who leads. None unless every
        view's main fit is done (``stages=[main]`` or the answer stage)."""
        from nsync.analysis.leader import leader_between
        from nsync.errors import NsyncError

        rows, mains = [], []
        for source, target, _ in views(pair.models):
            folder = self.out / name / _name(source) / "controls_chosen_alpha" / "main"
            main = self._result(folder)
            if main is None:
                return None
            if main.subspace is None:
                return {"written": time.strftime("%Y-%m-%d"), "rows": [], "why": f"{source} -> {target}'s main fit has no subspace "
                        "(subspace.max_rank=0, or an MLP probe)"}  # fmt: skip
            mains.append((folder, main))
            few = main.few_test_episodes
            for direction, d in main.directions.items():
                sub = d.subspace
                if sub is None:
                    continue
                depth = main.source_depth
                rows.append({
                    "view": f"{source} -> {target}", "direction": direction, "sync_r2": d.sync_r2,
                    "sync_r2_bias_corrected": None if few else d.sync_r2_bias_corrected, "sync_r2_ci95": None if few else d.sync_r2_ci95,
                    "dimensionality": sub.dimensionality, "dimensionality_ci95": None if few else sub.dimensionality_ci95,
                    "width": sub.ranks[-1], "alignment": sub.alignment, "random_alignment": sub.random_alignment,
                    "dimensionality_by_band": _by_band(depth, sub.dimensionality_by_source_layer, np.median),
                    "alignment_by_band": _by_band(depth, sub.alignment_by_source_layer, np.mean),
                    "random_alignment_by_band": _by_band(depth, sub.random_alignment_by_source_layer, np.mean),
                    "tracks": dict(sub.tracks), "test_episodes": main.test_episodes,
                })  # fmt: skip
        few = next((m.few_test_episodes for _, m in mains if m.few_test_episodes), None)
        if len(mains) == 1:  # a self pair's one fit holds both directions and their asymmetry
            leader = mains[0][1].asymmetry[0] if mains[0][1].asymmetry else None
            led = leader.line(few) if leader else "no paired difference: the fit has no bootstrap replicates (bootstrap=0)"
        else:  # a pair of two models: one fit per direction, paired by test episode
            try:
                leader = leader_between(mains[0][0], mains[1][0])
                led = leader.line(few)
            except NsyncError as err:
                leader, led = None, f"no paired difference: {err}"
        agents = (f"A and B both {pair.models[0]}" if len(set(pair.models)) == 1
                  else f"A {pair.models[0]}, B {pair.models[1]}")  # fmt: skip
        sub, cfg = mains[0][1].subspace, mains[0][1].fit_config()
        settings = (f"ranks 1-{sub.ranks[-2]} and full, {sub.share:.0%} of the full map's SyncR², intervals from "
                    f"{min(cfg.subspace.bootstrap, cfg.bootstrap)} replicates") if len(sub.ranks) > 1 else ""  # fmt: skip
        return {"written": time.strftime("%Y-%m-%d"), "rows": rows, "agents": f"{agents}; A speaks first", "settings": settings,
                "leader": None if leader is None else leader.model_dump(), "leader_line": led}

    def subspace_section(self, entries: dict[str, dict]) -> list[str]:
        """The page's "What is synchronised" tables, from the record's subspace entries."""
        lines = ["## What is synchronised", "",
                 "The main condition at the chosen alpha: each source layer's map at its chosen target reduced to rank 1, 2, ... "
                 "up to `subspace.max_rank` and full rank (nsync.stats.subspace). Dimensionality: the smallest rank reaching "
                 "`subspace.share` of the full map's SyncR², with a 95% interval over the fit's first `subspace.bootstrap` "
                 "replicates (each pair's settings below the table); by band, the median over the band's source layers of each "
                 "layer's own dimensionality (early, middle, late thirds by relative depth). Alignment: the share of the predictive "
                 "subspace inside as many of the source's leading principal components, beside a random subspace's share. Tracks: "
                 "test R² of the partner's next state in the shared dimensions from the conversation's shape (utterance index, "
                 "prompt and reply lengths), the topic (a text embedding of the source's history), the speaker (character), all three.",
                 "", "| pair | view, direction | SyncR² [95% CI] (raw) | dimensionality [95% CI] of width | dimensionality by band "
                 "(median): early / middle / late | alignment (random) by band | R² from shape / topic / speaker / all |",
                 "|---|---|---|---|---|---|---|"]
        led = []
        for pair in self.cfg.pairs:
            entry = entries.get(pair.name)
            if entry is None or "why" in entry:
                why = entry["why"] if entry else f"not fitted yet (`stages=[main] only=[{pair.name}]`)"
                lines.append(f"| {pair.name} | {why} | | | | | |")
                continue
            for r in entry["rows"]:
                dims = r["dimensionality_by_band"]
                band_dims = " / ".join("n/a" if dims[b] is None else f"{dims[b]:g}" for b, _, _ in BANDS)
                aligned = " / ".join("n/a" if r["alignment_by_band"][b] is None else
                                     f"{r['alignment_by_band'][b]:.2f} ({_f(r['random_alignment_by_band'][b], 2)})" for b, _, _ in BANDS)
                tracks = " / ".join("n/a" if r["tracks"].get(k) is None else f"{r['tracks'][k]:.2f}" for k in ("shape", "topic", "speaker", "all"))
                ci = r["dimensionality_ci95"]
                dim = "none" if r["dimensionality"] is None else f"{r['dimensionality']}" + (f" [{ci[0]}, {ci[1]}]" if ci else "")
                sync = f"{_f(r['sync_r2_bias_corrected'])} {_ci(*(r['sync_r2_ci95'] or (None, None)))} ({_f(r['sync_r2'])})"
                lines.append(f"| {pair.name} | {r['view']}, {r['direction']} | {sync} | {dim} of {r['width']} | {band_dims} | {aligned} | {tracks} |")
            led.append(f"- **{pair.name}** ({entry['agents']}; {entry['settings']}; written {entry['written']}): {entry['leader_line']}")
        return [*lines, "", "Who leads (the paired difference of the two directions' SyncR², the same test episodes in both):", "",
                *(led or ["- no pair fitted yet"]), ""]

    def _other_fits(self, folder: Path) -> list[tuple[str, str, object]]:
        """(run folder, label, result) of the finished fits besides the controls: main, the splits
        with their size-matched interaction fits, and the two probes."""
        runs = [("controls_chosen_alpha/main", "interaction (main)")]
        for s in self.cfg.splits:
            runs += [(f"split_{s}", s), (f"split_interaction_at_{s}_size", f"interaction, {s} split's size")]
        runs += [("probe_affine", "affine"), ("probe_mlp", "MLP")]
        if self.cfg.exclude_flags:
            runs.append(("without_flagged", f"interaction, without pairs with {' or '.join(self.cfg.exclude_flags)} replies"))
        found = [(run, label, self._result(folder / run)) for run, label in runs]
        return [f for f in found if f[2] is not None]

    @staticmethod
    def detectable_difference(chosen: pd.DataFrame) -> float | None:
        """Smallest true control-minus-main difference detected with 80% power at the 5% level,
        (1.96 + 0.84) standard errors, the standard error read off the paired intervals' median width."""
        widths = chosen.loc[chosen["control"] != "main", ["diff_ci95_low", "diff_ci95_high"]].dropna()
        if not len(widths):
            return None
        return 2.8 * float(np.median((widths["diff_ci95_high"] - widths["diff_ci95_low"]) / (2 * 1.96)))

    @staticmethod
    def coverage_check(rows: list[tuple[str, float, float | None, float | None]]) -> str:
        """Whether each raw SyncR² (label, raw, low, high) lies inside the interval printed beside it.
        The interval is centred on the bias-corrected value, so the raw one falls outside when the
        bootstrap's bias estimate exceeds the half-width (few test episodes); the text says so."""
        rows = [r for r in rows if r[2] is not None and r[3] is not None and not pd.isna(r[2]) and not pd.isna(r[3])]
        outside = [f"{label} ({raw:.3f} outside {_ci(lo, hi)})" for label, raw, lo, hi in rows if not lo <= raw <= hi]
        if not outside:
            return f"Each of the {len(rows)} raw SyncR² values lies inside its 95% interval."
        return (f"Raw SyncR² outside its interval ({len(outside)} of {len(rows)}): " + ", ".join(outside)
                + ". In these fits the bootstrap estimates the raw value's downward bias (R² is measured around the test "
                  "episodes' own mean, which shrinks the total variance most when they are few) as larger than the interval's "
                  "half-width; the interval is for the bias-corrected value printed beside it.")

    def reading(self, folder: Path, chosen: pd.DataFrame, paper: pd.DataFrame | None, main) -> str:
        """The view's numbers in words: controls (``read_controls``), alpha, layer profile, splits, probes."""
        from nsync.analysis.controls import read_controls
        from nsync.fit.results import layer_profile

        words = [read_controls(chosen)]
        if paper is not None and "main" in set(paper["control"]):
            fixed = float(paper.set_index("control").loc["main", "sync_r2"])
            words.append(f"The paper's fixed alpha 0.1 gives {fixed:.3f} for the main condition, the chosen alpha {main.sync_r2:.3f} (raw).")
        profile = layer_profile(main).groupby("source_layer").agg(depth=("source_depth", "first"), r2=("best_r2", "mean"),
                                                                   target_depth=("best_target_depth", "mean"))
        if len(profile):
            peak = profile.loc[profile["r2"].idxmax()]
            first, last = profile.iloc[0], profile.iloc[-1]
            words.append(f"By depth (mean over directions): best-target R² is {first.r2:.3f} from the first source layer, peaks at "
                         f"{peak.r2:.3f} from relative depth {peak.depth:.2f} (layer {int(peak.name)}) and is {last.r2:.3f} from the "
                         f"last; the best targets lie at relative depth {profile['target_depth'].mean():.2f} on average.")
        splits = {s: self._result(folder / f"split_{s}") for s in self.cfg.splits}
        splits = {s: r for s, r in splits.items() if r is not None}
        if splits:
            words.append("Holding out " + ", ".join(f"{s}s gives {r.sync_r2:.3f}" for s, r in splits.items())
                         + f" against {main.sync_r2:.3f} for held-out interactions (raw; separate test sets, so compare the intervals above).")
        for s in splits:
            matched = self._result(folder / f"split_interaction_at_{s}_size")
            if matched is not None:
                held_out = splits[s].sync_r2
                words.append(f"With as few training pairs as the {s} split ({_train_pairs(matched):.0f} per direction), held-out "
                             f"interactions give {matched.sync_r2:.3f}: of the change from {main.sync_r2:.3f} to {held_out:.3f}, "
                             f"{matched.sync_r2 - main.sync_r2:+.3f} comes with the smaller training set and "
                             f"{held_out - matched.sync_r2:+.3f} with holding out the {s}s.")
        affine, mlp = self._result(folder / "probe_affine"), self._result(folder / "probe_mlp")
        if affine is not None and mlp is not None:
            words.append(f"On the same source layers the MLP probe gives {mlp.sync_r2:.3f}, the affine {affine.sync_r2:.3f} "
                         f"({'more' if mlp.sync_r2 > affine.sync_r2 else 'no more'} than linear).")
        return " ".join(w for w in words if w)

    def write(self) -> list[Path]:
        sections, found, timings = [], {}, {}
        pairs = {}
        for pair in self.cfg.pairs:
            lines, pair_found, entry = self.pair_section(pair.name, pair)
            sections += lines
            found.update(pair_found)
            recorded = entry is not None and entry is self.record["pairs"].get(pair.name)
            timings.update(entry["timings"] if recorded else {k: v for k, v in self.timings.items() if k.startswith(f"{pair.name}/")})
            if entry is not None:
                pairs[pair.name] = entry
        wall = sum(timings.values())
        stages = ", ".join(f"{k} {v / 60:.0f} min" for k, v in timings.items())
        head = ["<!-- written by experiments/cpu_study/study.py; do not edit by hand -->", "",
                f"Wall time of the study so far (2-core CPU): {wall / 60:.0f} min ({stages})." if timings else "", ""]
        self.docs.mkdir(parents=True, exist_ok=True)
        pngs, captions = draw(self.docs, self.record, found)
        self.record["pairs"] = pairs
        subspace = self.record.setdefault("subspace", {})  # kept per pair, apart from the pair's full record
        for pair in self.cfg.pairs:
            if self._simulation_line(pair.name, pair)[2] and (entry := self.subspace_entry(pair.name, pair)):  # a complete cache
                subspace[pair.name] = entry
        sections += self.subspace_section(subspace)
        write_json_atomic(self.docs / RECORD, self.record)

        def page(links: list[str]) -> str:
            return "\n".join(head + links + [line for caption in captions for line in ("", caption)] + [""] + sections)

        written = [self.docs / "results.md", *pngs, self.docs / RECORD]
        written[0].write_text(page([f"![{p.stem}]({p.name})" for p in pngs]) + "\n")  # next to the PNGs
        return written
