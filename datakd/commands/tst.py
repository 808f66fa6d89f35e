"""`datakd tst fit` (TST Stage I: fit the meta-encoders, cached by content hash) and `datakd tst show`."""

from __future__ import annotations

import argparse
from typing import Any

from datakd.augmenters.tst.encoder_file import FitConfig, load_encoders
from datakd.commands.base import Command, register_command
from datakd.config import load_config
from datakd.engine.build import resolve_device
from datakd.errors import ConfigError
from datakd.jobs.tst_fit import fit_or_load, format_report

FLAGS = {
    "epochs_spatial": int,
    "epochs_color": int,
    "subset": float,
    "max_iters": int,
    "batch_size": int,
    "seed": int,
}


@register_command("tst")
class TST(Command):
    """TST Stage I: `tst fit` fits the 11 meta-encoders (cached by content hash), `tst show` prints a fit."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="tst_command", metavar="ACTION", required=True)
        fit = sub.add_parser(
            "fit",
            help="fit the meta-encoders to their hand-made ops and save them (re-used when up to date)",
            description="Fit the TST meta-encoders on a dataset's training split. The data section and "
            "augmenter.fit of --config are used (or --dataset); the file goes to --out or the recipe's "
            "augmenter.encoders. A file whose content hash matches is re-used unless --force.",
        )
        source = fit.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--config", help="a TST recipe: its data section, augmenter.fit and encoders path"
        )
        source.add_argument("--dataset", help="dataset name (with default data settings)")
        fit.add_argument("--data-root", help="folder holding the dataset files")
        fit.add_argument("--out", help="encoders file to write (default: the recipe's augmenter.encoders)")
        fit.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        fit.add_argument("--ops", help="comma-separated subset of the 11 magnitude ops (default: all)")
        for name, kind in FLAGS.items():
            fit.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"augmenter.fit.{name}")
        fit.add_argument("--force", action="store_true", help="fit again even if --out is up to date")
        fit.add_argument("--quiet", action="store_true", help="only print the final table")
        fit.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.options.rgb=true"
        )
        show = sub.add_parser("show", help="print the per-op report stored in an encoders file")
        show.add_argument("path", help="encoders file written by `datakd tst fit`")

    def run(self, args: argparse.Namespace) -> int:
        if args.tst_command == "show":
            payload = load_encoders(args.path)
            print(format_report(payload))
            print(f"fit settings: {payload['fit']}")
            return 0
        cfg, fit, out = _resolve(args)
        say = None if args.quiet else print
        payload, cached = fit_or_load(out, cfg.data, fit, resolve_device(args.device), args.force, say)
        print(format_report(payload))
        state = "up to date, re-used" if cached else "written"
        print(f"{out}: {state} (hash {payload['hash']})")
        return 0


def _resolve(args: argparse.Namespace) -> tuple[Any, FitConfig, str]:
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    base = None if args.config else {"data": {"dataset": args.dataset}}
    cfg = load_config(args.config, overrides, base=base)
    augmenter = cfg.augmenter if cfg.augmenter.get("name") == "tst" else {}
    values = dict(augmenter.get("fit") or {})
    for name in FLAGS:
        value = getattr(args, name)
        if value is not None:
            values[name] = int(value) if name == "subset" and float(value).is_integer() else value
    if args.ops:
        values["ops"] = [op.strip() for op in args.ops.split(",") if op.strip()]
    fit = FitConfig.from_dict(values)
    out = args.out or augmenter.get("encoders")
    if not out:
        raise ConfigError(
            "tst fit: no output file; pass --out ENC.pt (or use a recipe with augmenter.encoders)"
        )
    return cfg, fit, out
