"""``tsgf decode --config DATA.yaml [--shard I --num-shards N] [--parts fit val test]``: fill the decode cache.

Decodes the real parts a run of the same data config will read, before any training, into
``data.cache_dir`` (:mod:`~tsgf_lightning.data.cache`). With ``--num-shards N``, N such commands
(processes on one machine, or machines sharing ``cache_dir``), each with its own ``--shard`` in
``0..N-1``, decode disjoint rows of every part; whichever finds a part complete publishes its cache,
and a shard that is killed resumes when its command is run again. The config files are data
configs (``configs/*/data.yaml``: only a ``data:`` section), with ``--data.KEY=VALUE`` overrides as
in ``fit``. Only ``data.decode_workers`` processes per command decode (default: one per core).
"""

from __future__ import annotations

from jsonargparse import ActionConfigFile, ArgumentParser

from .data.cache import decode_shard
from .data.datamodule import VideoDataModule

PARTS = ("fit", "val", "test")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="tsgf decode", description=__doc__.split("\n\n")[0], exit_on_error=True)
    p.add_argument("--config", action=ActionConfigFile, help="a data config (repeatable; later files win)")
    p.add_class_arguments(VideoDataModule, "data")
    p.add_argument("--parts", type=list[str], default=list(PARTS), help="the parts to decode (fit, val, test)")
    p.add_argument("--shard", type=int, default=0, help="this command's shard, in 0..num-shards-1")
    p.add_argument("--num-shards", type=int, default=1, help="how many commands share the decoding")
    return p


def decode_main(args: list[str]) -> dict[str, str | None]:
    """Parse ``args`` and decode this shard of every requested part; ``{part: published cache or None}``."""
    p = parser()
    cfg = p.parse_args(args)
    unknown = [part for part in cfg.parts if part not in PARTS]
    if unknown or not 0 <= cfg.shard < cfg.num_shards:
        p.error(f"--parts must be among {', '.join(PARTS)} (got {', '.join(unknown)})" if unknown else
                f"--shard must be in 0..{cfg.num_shards - 1} (got {cfg.shard})")
    dm = p.instantiate_classes(cfg).data
    h, items, done = dm.hparams, dm.items_by_part(), {}
    for part in cfg.parts:
        if not items[part]:
            continue
        final = decode_shard(h.cache_dir, dm.source.cache_key(), part, items[part], dm.clip_spec(part), cfg.shard,
                             cfg.num_shards, h.decode_workers, h.max_bad_fraction)
        done[part] = str(final) if final else None
        print(f"{part}: {final or f'shard {cfg.shard + 1}/{cfg.num_shards} decoded; another shard publishes'}")
    return done
