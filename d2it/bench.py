"""`d2it bench`: what a study's runs cost on this device, DiT beside D²iT at one size.

Measured on random latents and images of the study's geometry, through the code the runs use
(the training loss, the respaced sampler, the DVAE, the metric extractor). Every figure is the
median of `repeats` timings; FLOPs are counted by torch.utils.flop_counter on one real training
step (forward and backward), so MFU = counted FLOPs x images/s / the device's peak.

    d2it bench [--config FILE] [--size XL] [--batch 64] [--json]

| figure | how it runs |
|---|---|
| train, fp32 eager | the reference: fp32, no compile, AdamW's per-tensor loop |
| train, default | the study's `train` settings on this device (bf16, compile, fused AdamW: auto) |
| train, compiled / eager | the default with torch.compile forced on (CPUs) or off (GPUs) |
| sample | the study's sampler and step count, with and without guidance |
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from d2it import study as studies
from d2it.batch_fit import fit_batch_gpu
from d2it.cost import PEAK_TFLOPS
from d2it.data.latents import CacheWriter, LatentCache
from d2it.diffusion import GaussianDiffusion, guided
from d2it.errors import D2itError
from d2it.models import build, dvae_architecture, latent_geometry
from d2it.stage2 import TASKS
from d2it.device import autocast, compile_network, memory, on_gpu
from d2it.task import RowDraws

# Dense bf16 tensor-core peaks (TFLOP/s, vendors' data sheets), matched against the device name.
KINDS = ("dit", "d2it")


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from): the data-sheet peak of a known GPU, else a measured
    square matmul in `dtype` (a CPU's, or an unknown GPU's, best case)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"data sheet ({key}, dense bf16)"
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ a, device, iters=10, repeats=3)
    return 2 * n**3 / seconds, f"measured {n}x{n} {str(dtype).removeprefix('torch.')} matmul"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, iters: int, repeats: int) -> float:
    """Seconds per call of fn: the median over `repeats` timings of `iters` calls, after as many
    warm-up calls (kernels chosen, graphs compiled, allocator and thread pools filled: two were
    too few on CPUs, where identical modes then differed by 10 %)."""
    for _ in range(max(2, iters)):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def bench_study(study: dict, size: str) -> dict:
    """The study's settings with a DiT and a D²iT spec of `size` (the schema's switches)."""
    specs = {"dit": {"kind": "dit", "size": size}, "d2it": {"kind": "d2it", "size": size}}
    keep = ("name", "data", "grain", "dvae", "diffusion", "train", "sampling", "metrics")
    return studies.resolve({**{k: study[k] for k in keep}, "specs": specs, "tables": {},
                            "figures": {}, "tracking": {"uri": None}}, f"bench of {study['name']}")


def random_cache(folder: Path, study: dict, n: int) -> tuple[LatentCache, list[torch.Tensor]]:
    """A latent cache of n random rows of the study's geometry, and those rows as one batch."""
    latent = latent_geometry(study["dvae"]["preset"], study["data"]["resolution"])
    channels, side = latent["channels"], latent["size"]
    g = torch.Generator().manual_seed(0)
    batch = [torch.randn(n, 2, channels, side, side, generator=g),
             torch.rand(n, 2, side // 2, side // 2, generator=g) < 0.5,  # the paper's ratio
             torch.randint(0, study["data"]["classes"], (n,), generator=g)]
    writer = CacheWriter(folder, {"train": n}, views=2, channels=channels, size=side)
    writer.add("train", *batch)
    writer.finish({"num_classes": study["data"]["classes"], "dvae_run": None,
                   "dvae_digest": None})
    return LatentCache(folder), batch


def make_task(study: dict, kind: str, cache: LatentCache, device: torch.device):
    torch.manual_seed(0)
    arch = studies.model_architecture(study, kind)
    task = TASKS[kind](build(arch), study["specs"][kind], cache, study["diffusion"])
    task.to(device)
    return task


def train_step(task, batch, device: torch.device, bf16: bool, fused: bool):
    """One training step of the runs' loop: the task's loss, backward, AdamW."""
    model, draws = task.model.train(), RowDraws(0, len(batch[0]), device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    rows = torch.arange(len(batch[0]))

    def step():
        draws.begin(0, rows)
        with autocast(device, bf16):
            _, loss, _ = next(task.losses(batch, 0, draws))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_flops(task, batch, device: torch.device) -> float:
    """FLOPs of one training step's forward and backward, counted per image."""
    draws = RowDraws(0, len(batch[0]), device)
    with FlopCounterMode(display=False) as counter:
        _, loss, _ = next(task.losses(batch, 0, draws))
        loss.backward()
    task.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch[0])


def bench_training(study: dict, kind: str, cache, batch, device, timing: dict) -> dict:
    """Images/s of the training step in each mode, MFU of the default mode, peak memory."""
    train = study["train"]
    bf16, compiled, fused = (train["bf16"], on_gpu(train["compile"], device),
                             on_gpu(train["fused_adamw"], device))
    modes = {"fp32_eager": (False, False, False), "default": (bf16, compiled, fused)}
    if compiled:  # the default compiles: measure it eager too
        modes["eager"] = (bf16, False, fused)
    elif timing["compiled"]:
        modes["compiled"] = (bf16, True, fused)
    # What train.batch_gpu: auto would pick for this global batch (the probe alone on the device)
    task = make_task(study, kind, cache, device)
    optimisers = {"model": torch.optim.AdamW(task.model.parameters(), fused=fused)}
    fit = {"batch_size": len(batch[0]), "steps": 1, "bf16": bf16}
    result = {"batch_gpu_auto": fit_batch_gpu(task, optimisers, fit, 1, device)}
    del task, optimisers
    for mode, (bf16, compiled, fused) in modes.items():
        task = make_task(study, kind, cache, device)
        if mode == "default":
            result["flops_per_img"] = step_flops(task, batch, device)
        network = compile_network(task.model, compiled, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = median_seconds(train_step(task, batch, device, bf16, fused), device,
                                 timing["iters"], timing["repeats"])
        result[mode] = {"img_s": len(batch[0]) / seconds, "bf16": bf16 and device.type == "cuda",
                        "network": network, "fused_adamw": fused}
        if mode == "default" and timing["profile"]:
            result["profile"] = profile_step(train_step(task, batch, device, bf16, fused),
                                             device)
        if mode == "default":
            result["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30
                                      if device.type == "cuda" else memory()["peak_rss_mib"] / 1024)
            result["params_M"] = sum(p.numel() for p in task.model.parameters()) / 1e6
        del task
    return result


def profile_step(step, device: torch.device, top: int = 12) -> list[dict]:
    """The operators that take the most (device, else CPU) time over three training steps: name,
    milliseconds per step and share of the step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    step()  # warm-up outside the trace
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [{"op": e.key, "ms_per_step": getattr(e, attr) / 3 / 1e3,
             "share": getattr(e, attr) / total} for e in events[:top]]


def bench_sampling(study: dict, kind: str, cache, batch, device, timing: dict) -> dict:
    """Images/s of the study's sampler over its step count, without and with guidance (the
    study's scale, else 1.5), the network in eval mode under the sampling dtype."""
    s = study["sampling"]
    task = make_task(study, kind, cache, device)
    net = task.model.eval()
    network = compile_network(net, s["compile"], device)
    process = GaussianDiffusion.dit(study["diffusion"]["timesteps"], s["steps"],
                                    study["diffusion"]["learn_sigma"])
    sampler = process.ddpm_sample if s["sampler"] == "ddpm" else process.ddim_sample
    n = len(batch[0])
    z, grain, y = batch[0][:, 0], batch[1][:, 0], batch[2]
    extra = {"grain": grain} if kind == "d2it" else {}
    classes = study["data"]["classes"]
    scales = {"sample_img_s": 1.0}
    if classes > 1:
        scales["sample_guided_img_s"] = s["cfg_scale"] if s["cfg_scale"] != 1 else 1.5
    result = {"sample_network": network}
    for key, scale in scales.items():
        fn = net if scale == 1 else guided(net, classes, scale, s["cfg_channels"])

        def model(x, t, fn=fn):
            with autocast(device, s["bf16"]):
                return fn(x, t, y, **extra).float()

        def run():
            sampler(model, lambda shape: torch.randn(shape, device=device), z.shape)

        with torch.no_grad():
            result[key] = n / median_seconds(run, device, 1, min(timing["repeats"], 3))
    return result


def bench_dvae(study: dict, device, timing: dict) -> dict:
    """Images/s of the study's DVAE (dual-grain, r = 0.5) encoding and decoding."""
    res = study["data"]["resolution"]
    torch.manual_seed(0)
    dvae = build(dvae_architecture(study["dvae"]["preset"], res, 0.5)).eval().to(device)
    latent = latent_geometry(study["dvae"]["preset"], res)
    n = timing["batch"]
    x = torch.rand(n, 3, res, res, device=device) * 2 - 1
    grain = torch.rand(n, latent["size"] // 2, latent["size"] // 2, device=device) < 0.5
    z = torch.randn(n, latent["channels"], latent["size"], latent["size"], device=device)
    with torch.no_grad():
        encode = median_seconds(lambda: dvae.encode(x, grain).latent(), device, 1,
                                timing["repeats"])
        decode = median_seconds(lambda: dvae.decode(z), device, 1, timing["repeats"])
    return {"encode_img_s": n / encode, "decode_img_s": n / decode}


def bench_features(study: dict, device, timing: dict) -> dict:
    """Images/s of the metric extractor on uint8 images of the study's resolution; without its
    weights (Inception offline), the reason instead, and the other figures stand."""
    from d2it.metrics.evaluate import extract
    from d2it.metrics.extractors import resolve

    extractor = resolve(study["metrics"])
    res = study["data"]["resolution"]
    images = torch.randint(0, 256, (timing["batch"], 3, res, res), dtype=torch.uint8)
    try:
        seconds = median_seconds(lambda: extract(images, extractor, timing["batch"], device),
                                 device, 1, timing["repeats"])
    except D2itError as e:
        return {"extractor": extractor.name, "features_img_s": None, "skipped": str(e)}
    return {"extractor": extractor.name, "features_img_s": timing["batch"] / seconds}


def run(study: dict, size: str, batch: int, iters: int = 10, repeats: int = 5,
        compiled: bool = True, profile: bool = False) -> dict:
    """Every figure of the bench, with the settings that made them and the derived ratios."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the runs
        torch.backends.cudnn.allow_tf32 = True
    study = bench_study(study, size)
    timing = {"batch": batch, "iters": iters, "repeats": repeats, "compiled": compiled,
           "profile": profile}
    bf16 = study["train"]["bf16"] and device.type == "cuda"
    peak, peak_source = peak_flops(device, torch.bfloat16 if bf16 else torch.float32)
    result = {"device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                         else f"cpu ({torch.get_num_threads()} threads)"),
              "torch": torch.__version__, "size": size, "batch": batch,
              "latent": latent_geometry(study["dvae"]["preset"], study["data"]["resolution"]),
              "settings": timing, "peak_flops": peak, "peak_source": peak_source,
              "sampling": {k: study["sampling"][k] for k in ("sampler", "steps", "cfg_scale")},
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cache, rows = random_cache(Path(tmp) / "latents", study, batch)
        rows = [t.to(device) for t in rows]
        for kind in KINDS:
            found = bench_training(study, kind, cache, rows, device, timing)
            found.update(bench_sampling(study, kind, cache, rows, device, timing))
            found["train_img_s"] = found["default"]["img_s"]
            found["mfu"] = found["flops_per_img"] * found["train_img_s"] / peak
            result["models"][kind] = found
    result["dvae"] = bench_dvae(study, device, timing)
    result["metrics"] = bench_features(study, device, timing)
    result["estimates"] = estimates(study, result)
    result["ratios"] = ratios(result["models"])
    return result


def ratios(models: dict) -> dict:
    """D²iT's step time over DiT's, and each model's default (and compiled) over fp32 eager."""
    dit, d2it = models["dit"], models["d2it"]
    out = {"d2it_over_dit_step": dit["train_img_s"] / d2it["train_img_s"],
           "optimised_over_fp32_eager": {k: m["train_img_s"] / m["fp32_eager"]["img_s"]
                                         for k, m in models.items()}}
    pairs = {k: (m.get("compiled", m["default"]), m.get("eager", m["default"]))
             for k, m in models.items() if "compiled" in m or "eager" in m}
    if pairs:
        out["compiled_over_eager"] = {k: c["img_s"] / e["img_s"] for k, (c, e) in pairs.items()}
    return out


def estimates(study: dict, result: dict) -> dict:
    """Hours of one training run (the study's steps at its global batch) and of one sample set
    (the study's sample count), per model, at the measured default speeds on this device."""
    train, n = study["train"], study["sampling"]["n"]
    out = {}
    for kind, m in result["models"].items():
        out[kind] = {"train_run_h": train["steps"] * train["batch_size"] / m["train_img_s"] / 3600,
                     f"sample_{n}_h": n / m["sample_img_s"] / 3600}
        if "sample_guided_img_s" in m:
            out[kind][f"sample_{n}_guided_h"] = n / m["sample_guided_img_s"] / 3600
    return out


def _cell(values: list[float]) -> str:
    return f"{values[0]:.1f}" if values else "–"


def markdown(result: dict) -> str:
    """The bench as the README's table."""
    lines = [f"`d2it bench` on {result['device']}, torch {result['torch']}, size "
             f"{result['size']}, batch {result['batch']}, latent "
             f"{result['latent']['size']}x{result['latent']['size']}x"
             f"{result['latent']['channels']}; peak {result['peak_flops'] / 1e12:.1f} TFLOP/s "
             f"({result['peak_source']}); medians of {result['settings']['repeats']} timings",
             "",
             "| model | params | train img/s: default | fp32 eager | eager | compiled | MFU | "
             "GFLOP/img/step | peak GiB | sample img/s | guided |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, m in result["models"].items():
        modes = [m[k] for k in ("default", "eager", "compiled") if k in m]
        eager = [x["img_s"] for x in modes if x["network"] != "compiled"]
        compiled = [x["img_s"] for x in modes if x["network"] == "compiled"]
        guided = m.get("sample_guided_img_s", float("nan"))
        lines.append(f"| {kind} | {m['params_M']:.1f} M | {m['train_img_s']:.1f} | "
                     f"{m['fp32_eager']['img_s']:.1f} | {_cell(eager)} | {_cell(compiled)} | "
                     f"{100 * m['mfu']:.1f} % | {m['flops_per_img'] / 1e9:.2f} | "
                     f"{m['peak_mem_gib']:.2f} | {m['sample_img_s']:.1f} | {guided:.1f} |")
    r = result["ratios"]
    lines += ["", f"D²iT / DiT step time: {r['d2it_over_dit_step']:.3f}; default / fp32 eager: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in r["optimised_over_fp32_eager"].items())]
    if "compiled_over_eager" in r:
        lines[-1] += "; compiled / eager: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in r["compiled_over_eager"].items())
    features = result["metrics"]
    speed = (f"{features['features_img_s']:.1f} img/s" if features["features_img_s"]
             else f"not measured: {features['skipped']}")
    lines += [f"DVAE: encode {result['dvae']['encode_img_s']:.1f} img/s, decode "
              f"{result['dvae']['decode_img_s']:.1f} img/s; metric features "
              f"({features['extractor']}) {speed}",
              f"Per-GPU batch of train.batch_gpu auto for a batch of {result['batch']}: "
              + ", ".join(f"{k} {m['batch_gpu_auto']}" for k, m in result["models"].items()),
              "Estimated hours: " + "; ".join(
                  f"{k}: " + ", ".join(f"{name} {h:.3g}" for name, h in e.items())
                  for k, e in result["estimates"].items())]
    for kind, m in result["models"].items():
        if "profile" in m:
            lines += ["", f"Top operators of one default {kind} step:", "",
                      "| operator | ms / step | share |", "|---|---|---|"]
            lines += [f"| `{p['op']}` | {p['ms_per_step']:.2f} | {100 * p['share']:.1f} % |"
                      for p in m["profile"]]
    return "\n".join(lines) + "\n"
