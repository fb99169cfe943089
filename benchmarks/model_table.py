"""Parameters and forward GMACs of every registered model at its own input size (1000 or 10 classes as registered);
language models in a second table (parameters with the tied head counted once, GMACs per full context).

    python benchmarks/model_table.py [PATTERN]

Built on the meta device (no memory, no compute), so it runs in seconds on any machine. Prints a Markdown table.
"""
import sys

import torch

import vitlab
from vitlab import count_flops


def main(pattern: str = "") -> None:
    print("| model | alias | input | classes | params (M) | GMACs |")
    print("|---|---|---:|---:|---:|---:|")
    from vitlab.models import short_alias

    names = vitlab.list_models(pattern)
    language = [n for n in names if vitlab.get_pretrained_cfg(n).get("task") == "lm"]
    clip = [n for n in names if vitlab.get_pretrained_cfg(n).get("task") == "clip" and n != "clip"]
    for name in [n for n in names if n not in language and n not in clip and n != "clip"]:
        with torch.device("meta"):
            model = vitlab.create_model(name).eval()
        c, h, w = model.pretrained_cfg["input_size"]
        macs = count_flops(model, torch.empty(1, c, h, w, device="meta")) / 2e9
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {short_alias(name)} | {h} | {model.num_classes} | {params:.3f} | {macs:.2f} |")
    if clip:
        print("\n| CLIP model | image input | text tokens | params (M): image / text / all | GMACs: image / text |")
        print("|---|---:|---:|---|---|")
    for name in clip:
        with torch.device("meta"):
            model = vitlab.create_model(name).eval()
        c, h, w = model.pretrained_cfg["input_size"]
        length = model.text.context_length
        image_macs = count_flops(model.visual, torch.empty(1, c, h, w, device="meta")) / 2e9
        text_macs = count_flops(model.text, torch.zeros(1, length, dtype=torch.long, device="meta")) / 2e9
        image, text = (sum(p.numel() for p in tower.parameters()) / 1e6 for tower in (model.visual, model.text))
        total = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {h} | {length} | {image:.3f} / {text:.3f} / {total:.3f} | {image_macs:.2f} / "
              f"{text_macs:.2f} |")
    if language:
        print("\n| language model | layers / heads / width | vocabulary | context | params (M) | GMACs per context |")
        print("|---|---|---:|---:|---:|---:|")
    for name in language:
        with torch.device("meta"):
            model = vitlab.create_model(name).eval()
        macs = count_flops(model, torch.zeros(1, model.block_size, dtype=torch.long, device="meta")) / 2e9
        params = sum(p.numel() for p in model.parameters()) / 1e6  # parameters() counts a tied tensor once
        print(f"| {name} | {model.n_layer} / {model.n_head} / {model.n_embd} | {model.vocab_size} | "
              f"{model.block_size} | {params:.3f} | {macs:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
