#!/bin/bash
# What scripts/gpu_check.sh needs on a lent GPU machine, which has PyTorch and Lightning but no network: the wheels
# of lit_nat's pure-Python dependencies its image lacks (.whl/, pinned as constraints/ci.txt pins them) and the
# official code bases to time beside ours (.official/ENAT, .official/ImprovedNAT: working trees, no .git).
# Run here (the package registry is reachable), then call the device tool with carry [".whl", ".official"].
#
#   bash scripts/gpu_prepare.sh /path/to/ENAT-clone /path/to/ImprovedNAT-clone
set -euo pipefail
cd "$(dirname "$0")/.."
enat=${1:?give a clone of LeapLabTHU/ENAT}
autonat=${2:?give a clone of LeapLabTHU/ImprovedNAT}
for part in "$enat/libs/models.py" "$autonat/libs/nat_model.py"; do
    [ -f "$part" ] || { echo "gpu_prepare: no $part; give clones of LeapLabTHU/ENAT and LeapLabTHU/ImprovedNAT" >&2; exit 2; }
done
pin() { grep -i "^$1==" constraints/ci.txt | head -1; }
wheels=(webdataset braceexpand jsonargparse docstring_parser typeshed_client torch_fidelity huggingface_hub)
rm -rf .whl .official && mkdir -p .whl .official
for name in "${wheels[@]}"; do
    spec=$(pin "$name")
    [ -n "$spec" ] || { echo "gpu_prepare: constraints/ci.txt pins no $name" >&2; exit 2; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$spec"
done
for pair in "ENAT:$enat" "ImprovedNAT:$autonat"; do  # the files alone: the device call carries 64 MiB at most
    name=${pair%%:*} src=${pair#*:}
    mkdir -p ".official/$name" && (cd "$src" && tar --exclude=.git --exclude=assets -cf - .) | tar -xf - -C ".official/$name"
done
du -sh .whl .official
