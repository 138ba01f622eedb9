"""The official sampling code timed beside ours: ``benchmark --official_enat PATH`` and ``--official_autonat PATH``.

``PATH`` is the user's clone of LeapLabTHU/ENAT or LeapLabTHU/ImprovedNAT (AutoNAT). Its model is built at the size
of the backbone being benchmarked (random weights: the time does not depend on them) and its ``NATSchedule.generate``
runs the same batch, steps and precision as our sampling case. Nothing of that code is copied into lit_nat: it is
imported from ``PATH``, in a child process, because its ``libs``, ``timm`` and ``taming`` packages would shadow
installed ones. The child stays up for the case: built and warmed up once, it times one official call whenever the
parent asks, right after the parent timed one of ours, so each pair meets the machine in the same state
(``paired_ratio``); the parent measures the matmul peak before each pair.

Differences worth knowing when reading the numbers:

* both official loops run the conditional and the unconditional branch as two forwards of B rows (ours: one of 2B),
  draw tokens with ``torch.distributions.Categorical`` and the re-masking noise with NumPy on the host;
* ENAT: the release's ImageNet-256 sampling arguments (``--cfg_scale 2.5 --mask_temp 1.5 --samp_temp 6``), features
  always reused; its unused ``prev_embedder`` costs nothing, so its GFLOPs per image equal ours;
* AutoNAT: our case's schedule in the official strategy format (the official generate takes per-step lists; times do
  not depend on the values), guided as its ``train.py`` evaluation guides (``cond + w (cond - uncond)``, null class
  1000); attention through xformers where the child can import it, else its plain softmax attention (the line's
  ``official_attention``); its grid is fixed at 16 x 16. ``loguru``, which it imports only to log, is stood in for
  by the standard library's logger when not installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_nat.commands import benchmark_cases as cases
from lit_nat.core.errors import UsageError
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models.uvit import UViT

#: the ENAT release's ImageNet-256 sampling arguments (its README's evaluation command)
RELEASE_SAMPLING = {"cfg_scale": 2.5, "mask_temp": 1.5, "samp_temp": 6.0}
#: the class id both official loops use for the unconditional branch (hard-coded there)
OFFICIAL_NULL_CLASS = 1000
#: the token grid side the official AutoNAT ``generate`` hard-codes
AUTONAT_GRID = 16


@dataclass(frozen=True)
class OfficialCode:
    """One official code base: the option naming its clone, the repository, files that show a clone is one."""

    flag: str
    repo: str
    files: tuple[str, ...]


OFFICIAL = {
    "enat": OfficialCode("--official_enat", "LeapLabTHU/ENAT",
                         ("libs/models.py", "libs/nat_misc.py", "timm/models/vision_transformer.py")),
    "autonat": OfficialCode("--official_autonat", "LeapLabTHU/ImprovedNAT",
                            ("libs/nat_model.py", "libs/nat_misc.py", "timm/models/vision_transformer.py")),
}  # fmt: skip


def check_official_root(path: str, code: str = "enat") -> Path:
    official, root = OFFICIAL[code], Path(path)
    for part in official.files:
        if not (root / part).is_file():
            raise UsageError(f"benchmark: {official.flag} {path}: no {part} there; give a clone of {official.repo}")
    return root


def applies(code: str, target: cases.Target) -> bool:
    """Whether ``code``'s loop is offered beside ``target``: ENAT's for ENAT backbones, AutoNAT's for U-ViTs."""
    return target.reuses if code == "enat" else isinstance(target.backbone, UViT)


def official_spec(target: cases.Target, code: str = "enat") -> dict[str, Any]:
    """The official model's arguments of the same size as ``target``'s backbone (a Skip where its loop cannot run)."""
    backbone = target.backbone
    if not applies(code, target):
        raise cases.Skip(f"the official {code} code runs {'ENAT' if code == 'enat' else 'U-ViT'} backbones only")
    if backbone.num_classes != OFFICIAL_NULL_CLASS or backbone.grid_size[0] != backbone.grid_size[1]:
        raise cases.Skip("the official loops need 1000 classes (their null class is 1000) on a square grid")
    if getattr(backbone, "context_embed", None) is not None:
        raise cases.Skip("the official class-conditional loops take class ids, not text")
    block = backbone.blocks[0] if code == "enat" else backbone.mid_block
    common = dict(num_heads=backbone.num_heads, codebook_size=backbone.codebook_size,
                  mlp_ratio=block.mlp.fc1.out_features / backbone.width)  # fmt: skip
    if code == "enat":
        return dict(input_size=backbone.grid_size[0], hidden_size=backbone.width,
                    enc_dec=[backbone.encoder_layers, backbone.decoder_layers], **common)  # fmt: skip
    if backbone.grid_size[0] != AUTONAT_GRID:
        raise cases.Skip(f"the official AutoNAT generate is fixed at a {AUTONAT_GRID} x {AUTONAT_GRID} grid")
    return dict(img_size=AUTONAT_GRID, embed_dim=backbone.width, depth=backbone.num_layers - 1,
                qkv_bias=backbone.mid_block.attn.qkv.bias is not None, **common)  # fmt: skip


def sampling(target: cases.Target, root: Path, *, batch: int, steps: int, dtype: str, device: torch.device,
             warmup: int, repeats: int, matmul_size: int, adjacent_peak: bool, code: str = "enat",
             compile: str = "false") -> dict[str, Any]:  # fmt: skip
    """Our sampling case's numbers for the official loop, measured in a child process, each official call right after
    one of ours (the Gumbel draw, as the official loops draw; ours under ``compile``, the official loop eager, as its
    code runs): ``paired_ratio`` is the median of the per-pair ratios
    (official seconds / ours), which a machine whose speed drifts between cases cannot bias as it biases two medians
    taken minutes apart; ``paired_lit_nat_images_per_s`` is ours in those pairs."""
    if dtype == "bf16-true":
        raise cases.Skip("the official code samples in float32 or under autocast; bf16-true is lit_nat's")
    request = dict(code=code, root=str(root), model=official_spec(target, code), batch=batch, steps=steps,
                   dtype=dtype, device=str(device), warmup=warmup)  # fmt: skip
    ours = cases.sampling_call(target, batch=batch, steps=steps, dtype=dtype, compile=compile, reuse=True,
                               draw="gumbel", device=device)  # fmt: skip
    probe = cases.matmul_probe(matmul_size, dtype, device) if adjacent_peak else None
    with OfficialChild(request, root) as child:
        for _ in range(warmup):
            ours()
        (our_times, official_times), peaks = cases.bracketed([lambda: cases.seconds_of(ours, device), child.time],
                                                             probe, repeats)  # fmt: skip
    extra = {"official_attention": child.ready["attention"]} if "attention" in child.ready else {}
    ratio = statistics.median(o / u for o, u in zip(official_times, our_times))
    return {"seconds": statistics.median(official_times), "images": batch,
            "gflops_per_image": cases.sampling_gflops(target, steps, True), **cases.peak_summary(peaks),
            "paired_ratio": cases.significant(ratio),
            "paired_lit_nat_images_per_s": cases.significant(batch / statistics.median(our_times)),
            **extra}  # fmt: skip


class OfficialChild:
    """The official loop in a child process that stays up: built and warmed up once (its first JSON line, ``ready``),
    then one timed call per :meth:`time`. Its stderr goes to a file, so a crash is reported by its last line."""

    def __init__(self, request: dict[str, Any], root: Path) -> None:
        self.request, self.root, self.ready = request, root, {}

    def __enter__(self) -> OfficialChild:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(self.request)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True)  # fmt: skip
        try:
            self.ready = self.reply()
        except BaseException:
            self.__exit__()
            raise
        return self

    def reply(self) -> dict[str, Any]:
        """The child's next JSON line (the official code may print other lines), or a Skip with its last error."""
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.process.wait()
        self.log.seek(0)
        last = (self.log.read().strip().splitlines() or ["no output"])[-1]
        raise cases.Skip(f"the official code at {self.root} failed: {last}")

    def time(self) -> float:
        with contextlib.suppress(BrokenPipeError):  # a child that died: reply() reports its last error
            self.process.stdin.write("time\n")
            self.process.stdin.flush()
        return float(self.reply()["seconds"])

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # the child's loop ends at end of input
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------------ in the child
def serve(request: dict[str, Any], generate: Any, extra: dict[str, Any]) -> None:
    """Warm ``generate`` up, say ``ready``, then time one call (as its evaluation runs it: no_grad, the accelerator's
    autocast) per ``time`` line of the standard input, until it ends."""
    device, dtype = torch.device(request["device"]), request["dtype"]

    def run() -> None:
        with torch.no_grad(), cases.autocast(device, dtype):
            generate()

    for _ in range(request["warmup"]):
        run()
    print(json.dumps({"ready": True, **extra}), flush=True)
    for line in sys.stdin:
        if line.strip() != "time":
            break
        print(json.dumps({"seconds": cases.seconds_of(run, device)}), flush=True)


def build_official_enat(request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The official ENAT ``DiT`` and a call of its ``NATSchedule.generate``."""
    from libs.models import DiT  # the user's clone of LeapLabTHU/ENAT
    from libs.nat_misc import NATSchedule

    spec, device, batch = dict(request["model"]), torch.device(request["device"]), request["batch"]
    args = types.SimpleNamespace(enc_dec=spec.pop("enc_dec"), seq_len=spec["input_size"] ** 2, **RELEASE_SAMPLING)
    torch.manual_seed(0)
    nnet = DiT(depth=sum(args.enc_dec), num_classes=OFFICIAL_NULL_CLASS, args=args, **spec).to(device).eval()
    schedule = NATSchedule(codebook_size=spec["codebook_size"], device=device, args=args)
    labels = torch.arange(batch, device=device) % OFFICIAL_NULL_CLASS
    return lambda: schedule.generate(request["steps"], batch, nnet, lambda ids: ids, spec["input_size"],
                                     context=labels), {}  # fmt: skip


def build_official_autonat(request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The official AutoNAT ``UViT`` and a call of its ``NATSchedule.generate`` with its evaluation's guidance."""
    if "loguru" not in sys.modules:
        try:
            import loguru  # noqa: F401
        except ModuleNotFoundError:  # the official model logs through loguru.logger only
            sys.modules["loguru"] = types.SimpleNamespace(logger=logging.getLogger("official_autonat"))
    from libs import nat_model  # the user's clone of LeapLabTHU/ImprovedNAT
    from libs.nat_misc import NATSchedule

    spec, device, batch = dict(request["model"]), torch.device(request["device"]), request["batch"]
    torch.manual_seed(0)
    nnet = nat_model.UViT(num_classes=OFFICIAL_NULL_CLASS + 1, skip=True, **spec).to(device).eval()
    schedule = NATSchedule(codebook_size=spec["codebook_size"], device=device)
    labels = (torch.arange(batch, device=device) % OFFICIAL_NULL_CLASS)[:, None]  # (B, 1), as its test generator
    null = torch.full_like(labels, OFFICIAL_NULL_CLASS)

    def guided(ids: torch.Tensor, scale: float, context: torch.Tensor) -> torch.Tensor:  # its evaluation's guidance
        cond, uncond = nnet(ids, context=context), nnet(ids, context=null)
        return cond + scale * (cond - uncond)

    strategy = GenerationSchedule.enat(request["steps"]).to_official()  # the schedule of our sampling case
    attention = "xformers" if getattr(nat_model, "XFORMERS_IS_AVAILBLE", False) else "plain"
    return lambda: schedule.generate(request["steps"], batch, guided, lambda ids: ids, context=labels,
                                     **strategy), {"attention": attention}  # fmt: skip


if __name__ == "__main__":
    child_request = json.loads(sys.argv[1])
    sys.path.insert(0, child_request["root"])
    build = build_official_enat if child_request["code"] == "enat" else build_official_autonat
    serve(child_request, *build(child_request))
