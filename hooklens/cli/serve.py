"""`hooklens serve`: the explorer as a local web app (the `app` extra: Dash)."""

from __future__ import annotations

import argparse

from hooklens import models
from hooklens.cli import options
from hooklens.errors import InputError
from hooklens.exploration import ExploreSession
from hooklens.exploration.app import HOST, PORT, require_dash, serve
from hooklens.exploration.notebook import DEFAULT_TEXT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_lens_argument(parser, "offered")
    options.add_model_argument(parser, "model name (embedded, TransformerLens or hub)")
    options.add_model_class_argument(parser)
    options.add_processing_argument(parser)
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the prompt the page opens with")
    parser.add_argument(
        "--host",
        default=HOST,
        help="the address to listen on; the default serves this machine only (0.0.0.0 "
        "lets others on the network in: the app has no login)",
    )
    parser.add_argument("--port", type=int, default=PORT, help="the port to listen on")


def run(args: argparse.Namespace) -> int:
    require_dash()  # the extra is installed: said before the model loads
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    options.check_lens_paths(args.lens, args.model)
    model = models.load(args.model, model_class=args.model_class, processing=args.processing)
    session = ExploreSession(model, options.named_lenses(args.lens, model))
    print(f"hooklens serve: {session.describe(session.lens_names[-1])}")
    print(f"open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve(session, args.text, host=args.host, port=args.port)
    return 0
