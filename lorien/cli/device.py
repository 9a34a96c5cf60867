"""``lorien device``: run the device updater service (HTTP API, 127.0.0.1:12315 by default).

The flags come from the configuration dataclass (:func:`~device.config.config_flags`): one per config key, with
the field's help, so a new key is a new flag without a change here. Data flow: ``--config`` TOML + the flags
given (:func:`~device.config.overrides_from_flags`) → :func:`~device.config.load_config` → environment check →
the state directory's lock and the API token (:mod:`~device.startup`; a second device on the same state
directory exits 3 naming the first one's pid) → logging → the updater behind its API until interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lorien.cli._options import Commands, add_command, listen_failure
from lorien.device.config import config_flags


def _device(args: argparse.Namespace) -> int:
    from lorien.device.api import serve
    from lorien.device.config import check_environment, load_config, overrides_from_flags
    from lorien.device.report import Callbacks, setup_logging
    from lorien.device.startup import api_token, state_dir_lock
    from lorien.device.updater import Updater

    config = load_config(args.config, overrides_from_flags(vars(args)))
    check_environment(config)
    with state_dir_lock(config):
        token, where = api_token(config)
        config = dataclasses.replace(config, api_token=token)
        setup_logging(config.log_dir, args.verbose)
        print(f"lorien device: {where}", flush=True)
        try:
            serve(Updater(config, Callbacks(config.callback_url)))
        except OSError as error:  # waitress cannot listen: one line naming the port, not a file-system error
            raise listen_failure(error, config.host, config.port) or error from None
    return 0


def register(commands: Commands) -> None:
    command = add_command(
        commands,
        "device",
        _device,
        "run the device updater service (HTTP API on 127.0.0.1:12315 by default)",
        doing="running the device updater",
    )
    command.add_argument("--config", type=Path, help="device.toml (every option below can also be set there)")
    for flag in config_flags():
        if flag.value_type is bool:  # a switch: given = true; not given = the file's value or the default
            command.add_argument(flag.flag, dest=flag.dest, action="store_true", default=None, help=flag.help)
        else:
            action = "append" if flag.repeatable else "store"
            command.add_argument(flag.flag, dest=flag.dest, type=flag.value_type, action=action, help=flag.help)
