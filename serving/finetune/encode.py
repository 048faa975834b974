"""Records to Qwen3-VL training tensors: the loss falls on the answer only.

The prompt is rendered with the model's own chat template and processed with its own
processor (which expands the image placeholder to the image's visual tokens), exactly as vLLM
renders it at serving time; the answer is tokenized on its own and appended with
``<|im_end|>``, the token generation stops on. Prompt and image positions get label -100.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from serving.finetune.data import Example
from serving.finetune.errors import FinetuneError

IGNORE = -100
END = "<|im_end|>"
FACTOR = 32  # patch 16 x spatial merge 2: one visual token per 32 x 32 pixels


def load_image(ex: Example, max_edge: int) -> Image.Image:
    """RGB, long edge at most ``max_edge``, sides multiples of 32 as the gateway sends them."""
    with Image.open(io.BytesIO(ex.image_bytes())) as im:
        im.draft("RGB", (max_edge, max_edge))
        img = im.convert("RGB")
    w, h = img.size
    scale = min(1.0, max_edge / max(w, h))
    nw, nh = (max(FACTOR, round(w * scale / FACTOR) * FACTOR), max(FACTOR, round(h * scale / FACTOR) * FACTOR))
    return img if (nw, nh) == (w, h) else img.resize((nw, nh), Image.Resampling.LANCZOS)


class Encoder:
    def __init__(self, processor: Any, image_max_edge: int, max_length: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_max_edge = image_max_edge
        self.max_length = max_length
        end = self.tokenizer.convert_tokens_to_ids(END)
        if not isinstance(end, int) or end == self.tokenizer.unk_token_id:
            raise FinetuneError.of([f"the base model's tokenizer has no {END} token: not a Qwen3-VL chat model"])
        self.end_id = end
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else end)

    def __call__(self, ex: Example) -> dict[str, torch.Tensor]:
        prompt = self.processor.apply_chat_template(ex.chat(), tokenize=False, add_generation_prompt=True)
        enc = self.processor(
            text=[prompt], images=[load_image(ex, self.image_max_edge)], return_tensors="pt", padding=False
        )
        answer = self.tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [self.end_id]
        n_prompt = int(enc["input_ids"].shape[1])
        ids = torch.cat([enc["input_ids"][0], torch.tensor(answer, dtype=torch.long)])
        if ids.numel() > self.max_length:
            raise FinetuneError.of(
                [
                    f"line {ex.line}: {ids.numel()} tokens (image and prompt {n_prompt}, answer {len(answer)}) "
                    f"exceed max_length {self.max_length}; raise max_length or lower image_max_edge"
                ],
                param="data",
            )
        labels = torch.full_like(ids, IGNORE)
        labels[n_prompt:] = ids[n_prompt:]
        mm = enc.get("mm_token_type_ids")
        mm_ids = mm[0] if mm is not None else torch.zeros(n_prompt, dtype=torch.long)
        return {
            "input_ids": ids,
            "labels": labels,
            "mm_token_type_ids": torch.cat([mm_ids.long(), torch.zeros(len(answer), dtype=torch.long)]),
            "pixel_values": enc["pixel_values"],
            "image_grid_thw": enc["image_grid_thw"],
        }

    def lengths(self, examples: Sequence[Example]) -> list[tuple[int, int]]:
        """(tokens, answer tokens) per record; FinetuneError listing every record that is too long."""
        out, problems = [], []
        for ex in examples:
            try:
                item = self(ex)
            except FinetuneError as exc:
                problems += exc.problems
                continue
            out.append((int(item["input_ids"].numel()), int((item["labels"] != IGNORE).sum())))
        if problems:
            raise FinetuneError.of(problems, param="data")
        return out


def collate(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch; the images' patches are concatenated, as Qwen3-VL's vision tower takes them."""
    width = max(int(i["input_ids"].numel()) for i in items)

    def pad(key: str, value: int) -> torch.Tensor:
        rows = [torch.nn.functional.pad(i[key], (0, width - i[key].numel()), value=value) for i in items]
        return torch.stack(rows)

    ids = pad("input_ids", pad_id)
    mask = torch.stack(
        [torch.cat([torch.ones(i["input_ids"].numel()), torch.zeros(width - i["input_ids"].numel())]) for i in items]
    ).long()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": pad("labels", IGNORE),
        "mm_token_type_ids": pad("mm_token_type_ids", 0),
        "pixel_values": torch.cat([i["pixel_values"] for i in items]),
        "image_grid_thw": torch.cat([i["image_grid_thw"] for i in items]),
    }
