"""Train a `fusionc.nn.Potential` on energies and forces from a TOML config.

    fusionc train CONFIG.toml [--resume]        (or python -m fusionc.nn.train CONFIG.toml)
    torchrun --nproc_per_node 2 -m fusionc.nn.train CONFIG.toml      (data parallel: DDP over gloo)

The config's sections and keys, with their defaults (`DEFAULTS`); `data.path` is required:

    [data]   path = "ethanol.extxyz"   train = 1000   valid = 100   test = 0 (0: every frame left)   seed = 0
    [model]  layers = "default"   product = "mace"   cutoff = 5.0   num_bessel = 8
             radial_hidden = [64, 64, 64]   readout_hidden = 16   dtype = "float64"
             atomic_numbers = [] (empty: the elements of the training frames)
    [train]  out = "runs/potential"   epochs = 100   max_minutes = 0 (0: no limit)   batch_size = 10
             lr = 0.01   energy_weight = 1.0   forces_weight = 100.0   ema_decay = 0.99
             patience = 5   seed = 0   threads = 0 (0: torch's default)   progress = true

The loss is MACE's: energy_weight · mean((ΔE / atoms)²) + forces_weight · mean(ΔF²); Adam (amsgrad),
the learning rate times 0.8 when the validation loss has not improved for `patience` epochs, an
exponential moving average of the weights for evaluation. Writes to `out`: `checkpoint.pt` after each
epoch (atomically; `--resume` goes on from it), `model.pt` (the EMA weights of the best validation
epoch, for `Potential.from_checkpoint` and `fusionc.nn.Calculator`), `history.json` (per epoch: loss,
validation MAEs, seconds) and `results.json` (test MAEs of `model.pt`: energy in meV per structure,
forces in meV/Å per component). A malformed config or dataset is an error that names what is wrong,
raised before anything is written. Under torchrun each process computes its share of every batch
(every world-th structure) and DistributedDataParallel averages the gradients: the loss curve is the
one a single process makes with the same batches.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fusionc.nn.data import Graph, collate, read_dataset, statistics
from fusionc.nn.model import Potential

DEFAULTS = {
    "data": {"path": None, "train": 1000, "valid": 100, "test": 0, "seed": 0},
    "model": {"layers": "default", "product": "mace", "cutoff": 5.0, "num_bessel": 8,
              "radial_hidden": [64, 64, 64], "readout_hidden": 16, "dtype": "float64",
              "atomic_numbers": []},
    "train": {"out": "runs/potential", "epochs": 100, "max_minutes": 0.0, "batch_size": 10, "lr": 0.01,
              "energy_weight": 1.0, "forces_weight": 100.0, "ema_decay": 0.99, "patience": 5, "seed": 0,
              "threads": 0, "progress": True},
}


class ConfigError(ValueError):
    """A config that cannot be used: the message names the file and the key."""


def load_config(path: str | Path) -> dict:
    """The config at `path` merged over `DEFAULTS`; a ConfigError names a TOML syntax error (line and
    column), an unknown section or key (with the known ones), a value of the wrong type, or a missing
    `data.path`."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    return validate(raw, str(path))


def validate(raw: dict, where: str = "config") -> dict:
    """`raw` (sections of keys) merged over `DEFAULTS`, checked as `load_config` says."""
    config = copy.deepcopy(DEFAULTS)
    for section, values in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{where}: unknown section [{section}] (known: {', '.join(DEFAULTS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{where}: unknown key '{key}' in [{section}] (known: "
                                  f"{', '.join(DEFAULTS[section])})")
            default = DEFAULTS[section][key]
            expected = (int, float) if isinstance(default, float) else type(default) if default is not None else str
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
                raise ConfigError(f"{where}: [{section}] {key} = {value!r} must be {_kind(default)}")
            config[section][key] = value
    if config["data"]["path"] is None:
        raise ConfigError(f"{where}: [data] needs path = \"DATASET\" (an ase-readable file of frames with "
                          f"energies and forces)")
    if config["model"]["dtype"] not in ("float32", "float64"):
        raise ConfigError(f"{where}: [model] dtype must be \"float32\" or \"float64\", got {config['model']['dtype']!r}")
    for section, key in (("data", "train"), ("data", "valid"), ("train", "epochs"), ("train", "batch_size")):
        if config[section][key] < 1:
            raise ConfigError(f"{where}: [{section}] {key} must be at least 1, got {config[section][key]}")
    return config


def _kind(default) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(type(default), "a string")


def split(graphs: list[Graph], data: dict) -> tuple[list[Graph], list[Graph], list[Graph]]:
    """Train, validation and test frames: a permutation by `data.seed`, in that order."""
    n_train, n_valid, n_test = data["train"], data["valid"], data["test"]
    need = n_train + n_valid + max(n_test, 1)
    if need > len(graphs):
        raise ValueError(f"dataset {data['path']} has {len(graphs)} frames; train {n_train} + valid {n_valid} + "
                         f"test {max(n_test, 1)} need {need}")
    order = np.random.default_rng(data["seed"]).permutation(len(graphs))
    test_end = n_train + n_valid + n_test if n_test else len(graphs)
    pick = lambda a, b: [graphs[i] for i in order[a:b]]  # noqa: E731
    return pick(0, n_train), pick(n_train, n_train + n_valid), pick(n_train + n_valid, test_end)


def build_model(config: dict, train: list[Graph]) -> Potential:
    """A fresh potential for `config`, normalised with statistics of the training frames."""
    model_cfg = config["model"]
    numbers = model_cfg["atomic_numbers"] or sorted({int(z) for g in train for z in g.numbers})
    stats = statistics(train, numbers)
    dtype = getattr(torch, model_cfg["dtype"])
    with _default_dtype(torch.float64):
        model = Potential(numbers, model_cfg["layers"], model_cfg["product"], cutoff=model_cfg["cutoff"],
                          num_bessel=model_cfg["num_bessel"], radial_hidden=tuple(model_cfg["radial_hidden"]),
                          readout_hidden=model_cfg["readout_hidden"], **stats)
    return model.to(dtype)


class _default_dtype:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc) -> None:
        torch.set_default_dtype(self.saved)


class Objective(torch.nn.Module):
    """Energies and forces of a batch with the graph of the forces kept (training): the module that
    DistributedDataParallel wraps, so that its forward runs through DDP."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model.energy_and_forces(*inputs, training=True)


def loss_terms(energy: torch.Tensor, forces: torch.Tensor, batch, weights: tuple[float, float],
               graphs: int | None = None, components: int | None = None):
    """MACE's weighted loss, w_E Σ(ΔE/atoms)² / graphs + w_F ΣΔF² / components, with the batch's own
    counts unless given (the global batch's, when each process holds a part of it); and ΔE, ΔF."""
    de = energy - batch.energy
    df = forces - batch.forces
    graphs = graphs or batch.num_graphs
    components = components or df.numel()
    loss = weights[0] * ((de / batch.atoms) ** 2).sum() / graphs + weights[1] * (df ** 2).sum() / components
    return loss, de, df


def evaluate(model: Potential, graphs: list[Graph], batch_size: int, weights: tuple[float, float]) -> dict:
    """Loss and MAEs (energy in meV per structure, forces in meV/Å per component) over `graphs`."""
    dtype = next(model.parameters()).dtype
    total, e_abs, f_abs, n_f = 0.0, 0.0, 0.0, 0
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], model.species_index, dtype)
        energy, forces = model.energy_and_forces(*batch.inputs())
        loss, de, df = loss_terms(energy, forces, batch, weights)
        total += float(loss) * batch.num_graphs
        e_abs += float(de.abs().sum())
        f_abs += float(df.abs().sum())
        n_f += df.numel()
    return {"loss": total / len(graphs), "energy_mae_meV": 1000 * e_abs / len(graphs),
            "forces_mae_meV_per_A": 1000 * f_abs / n_f}


class EMA:
    """An exponential moving average of a model's parameters (what MACE evaluates with)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            s.lerp_(p, 1.0 - self.decay)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's parameters with the average (call again to swap back)."""
        for s, p in zip(self.shadow, model.parameters()):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _progress(enabled: bool, text: str, end: bool = False) -> None:
    if not enabled:
        return
    if sys.stderr.isatty():
        print("\r" + text.ljust(100), end="\n" if end else "", file=sys.stderr, flush=True)
    elif end:
        print(text, file=sys.stderr, flush=True)


def train(config: dict, resume: bool = False, graphs: list[Graph] | None = None, make_model=None) -> dict:
    """Train as `config` says (a dict from `load_config`/`validate`); returns the results written to
    `out/results.json`. Dataset and model are checked before `out` is created. `make_model(config,
    train_frames)` replaces `build_model` (the experiment trains mace-torch's MACE with this loop): it
    gives a module with `energy_and_forces`, `species_index`, `checkpoint`, `num_parameters` and
    `product_parameters`."""
    cfg, data_cfg = config["train"], config["data"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    out = Path(cfg["out"])
    graphs = graphs if graphs is not None else read_dataset(data_cfg["path"], config["model"]["cutoff"])
    train_set, valid_set, test_set = split(graphs, data_cfg)
    checkpoint_path = out / "checkpoint.pt"
    if resume and not checkpoint_path.exists():
        raise ValueError(f"--resume: {checkpoint_path} does not exist")
    torch.manual_seed(cfg["seed"])
    model = (make_model or build_model)(config, train_set)
    for g in graphs:  # every species must be known before training starts
        model.species_index(torch.from_numpy(g.numbers))
    weights = (cfg["energy_weight"], cfg["forces_weight"])
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if distributed else (1, 0)
    if cfg["batch_size"] < world:
        raise ValueError(f"[train] batch_size {cfg['batch_size']} is smaller than the {world} processes")
    objective = Objective(model)
    if distributed:
        objective = torch.nn.parallel.DistributedDataParallel(objective)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=cfg["patience"])
    ema = EMA(model, cfg["ema_decay"]) if cfg["ema_decay"] > 0 else None
    state = {"epoch": 0, "seconds": 0.0, "best": math.inf, "history": []}
    best_state = copy.deepcopy(model.state_dict())
    if resume:
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.shadow = saved["ema"]
        state, best_state = saved["state"], saved["best_model"]
        torch.set_rng_state(saved["rng"])
    writer = rank == 0  # one process writes the run's files
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    dtype = next(model.parameters()).dtype
    budget = cfg["max_minutes"] * 60 if cfg["max_minutes"] else math.inf

    def step(global_batch: list[Graph]) -> float:
        """One optimiser step on `global_batch`, this process's share of it every world-th graph: the
        loss is normalised by the global batch's counts and scaled by the world size, so that DDP's
        average of the processes' gradients is the global batch's gradient. Returns the global loss."""
        mine = global_batch[rank::world]
        batch = collate(mine, model.species_index, dtype)
        energy, forces = objective(*batch.inputs())
        loss, _, _ = loss_terms(energy, forces, batch, weights, len(global_batch),
                                3 * sum(len(g.numbers) for g in global_batch))
        (loss * world).backward()
        total = loss.detach().clone()
        if distributed:
            torch.distributed.all_reduce(total)
        return float(total)

    # the native kernels compile on their first call: one batch's loss and gradient (no step) first,
    # so that no epoch's time includes a compile
    step(train_set[:cfg["batch_size"]])
    optimizer.zero_grad(set_to_none=True)
    while state["epoch"] < cfg["epochs"] and state["seconds"] < budget:
        start = time.perf_counter()
        model.train()
        order = np.random.default_rng([cfg["seed"], state["epoch"]]).permutation(len(train_set))
        # every batch has a graph for each process: the last, if smaller than the world, is left out
        full, rest = divmod(len(order), cfg["batch_size"])
        n_batches = full + (rest >= world and rest > 0)
        running = 0.0
        for b in range(n_batches):
            optimizer.zero_grad(set_to_none=True)
            running += step([train_set[i] for i in order[b * cfg["batch_size"]:(b + 1) * cfg["batch_size"]]])
            optimizer.step()
            if ema is not None:
                ema.update(model)
            _progress(cfg["progress"] and writer, f"epoch {state['epoch'] + 1}/{cfg['epochs']} "
                      f"[{'#' * (20 * (b + 1) // n_batches):<20}] {b + 1}/{n_batches} loss {running / (b + 1):.4g}")
        train_seconds = time.perf_counter() - start
        if ema is not None:
            ema.swap(model)
        valid = evaluate(model, valid_set, 4 * cfg["batch_size"], weights)
        if valid["loss"] < state["best"]:
            state["best"] = valid["loss"]
            best_state = copy.deepcopy(model.state_dict())
            if writer:
                _atomic_save(model.checkpoint(), out / "model.pt")
        if ema is not None:
            ema.swap(model)
        scheduler.step(valid["loss"])
        state["epoch"] += 1
        state["seconds"] += time.perf_counter() - start
        state["history"].append({"epoch": state["epoch"], "train_loss": running / n_batches,
                                 "valid_loss": valid["loss"], "valid_energy_mae_meV": valid["energy_mae_meV"],
                                 "valid_forces_mae_meV_per_A": valid["forces_mae_meV_per_A"],
                                 "lr": optimizer.param_groups[0]["lr"], "train_seconds": train_seconds,
                                 "seconds": state["seconds"]})
        _progress(cfg["progress"] and writer, f"epoch {state['epoch']}/{cfg['epochs']}: train loss {running / n_batches:.4g}, "
                  f"valid E MAE {valid['energy_mae_meV']:.2f} meV, F MAE {valid['forces_mae_meV_per_A']:.2f} meV/Å, "
                  f"{train_seconds:.1f} s", end=True)
        if not writer:
            continue
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "ema": ema.shadow if ema is not None else None,
                      "best_model": best_state, "state": state, "rng": torch.get_rng_state(), "config": config}, checkpoint_path)
        (out / "history.json").write_text(json.dumps(state["history"], indent=1) + "\n")
    model.load_state_dict(best_state)
    test = evaluate(model, test_set, 4 * cfg["batch_size"], weights)
    results = {"parameters": model.num_parameters(), "product_parameters": model.product_parameters(), "epochs": state["epoch"], "seconds": state["seconds"],
               "seconds_per_epoch": (float(np.mean([h["train_seconds"] for h in state["history"]]))
                                 if state["history"] else None),
               "test_frames": len(test_set), **{f"test_{k}": v for k, v in test.items()}}
    if writer:
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusionc train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a TOML file (its sections and keys: above)")
    parser.add_argument("--resume", action="store_true", help="go on from OUT/checkpoint.pt")
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: one process of several
        torch.distributed.init_process_group("gloo")
    try:
        results = train(load_config(args.config), resume=args.resume)
    except ValueError as error:
        print(f"fusionc train: error: {error}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
