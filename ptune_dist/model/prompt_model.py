"""PromptModel: one frozen base, a table of named prompts (one per task) and the task heads.

Every sequence of a batch names its task (`seq_task`, data/batch.py), so one batch can mix tasks;
sequences of one task give the same result as a batch of that task alone. Which tasks a batch holds,
and where, is read on the host from its HostInfo (data/host.py, made from the CPU batch before it
moved): a forward asks the device for nothing. Shallow prompts are scattered into the input
embeddings where the data put their placeholder slots (`soft_mask`); deep prompts travel to every
attention layer as the `ptune_prefix` keyword (see attention.py). Sequence positions count real
tokens only (left or right padding give the same positions) and start after the P virtual tokens,
PEFT's convention, so the same weights give the same logits in both systems.
"""

from __future__ import annotations

import torch
from torch import nn

from ptune_dist.data.host import describe
from ptune_dist.data.task import TaskSpec
from ptune_dist.errors import ConfigError
from ptune_dist.methods.placement import Placement

from . import objectives
from .attention import PrefixKV
from .unpack import unpack


class PromptModel(nn.Module):
    def __init__(
        self,
        base: nn.Module,
        info,
        prompts: dict[str, nn.Module],
        heads: dict[str, nn.Module],
        tasks: list[TaskSpec],
        placement: Placement,
        attention_impl: str = "auto",
        device: torch.device | None = None,
    ):
        super().__init__()
        self.base = base
        self.info = info
        self.prompts = nn.ModuleDict(prompts)
        self.heads = nn.ModuleDict(heads)
        self.tasks = tasks
        self.placement = placement  # how the prompts enter the base (methods/placement.py)
        self.attention_impl = attention_impl
        self.device = torch.device(device) if device is not None else base.get_input_embeddings().weight.device
        self.num_virtual_tokens = next(iter(prompts.values())).num_virtual_tokens if prompts else 0
        if any(not spec.uses_head for spec in tasks):
            self.lm_head  # noqa: B018  (fails now, naming the problem, rather than at the first batch)
        for i, spec in enumerate(tasks):
            self.register_buffer(
                f"_words_{i}", objectives.word_table(spec.label_word_ids).to(self.device), persistent=False
            )

    # the parts of the HF model, found the same way for every architecture
    @property
    def backbone(self) -> nn.Module:
        return self.base.base_model

    @property
    def lm_head(self) -> nn.Module:
        """The module that turns hidden states into vocabulary logits (lm_head for Llama, cls for BERT)."""
        heads = [m for name, m in self.base.named_children() if name != self.base.base_model_prefix]
        if self.info.kind == "encoder" or len(heads) != 1:
            raise ConfigError(
                f"model: {self.info.model_type} loaded as {self.info.kind} has no single LM head "
                f"module (found {len(heads)}); score its tasks with a head (tasks.N.scoring=head)"
            )
        return heads[0]

    def words(self, task_index: int) -> torch.Tensor:
        return getattr(self, f"_words_{task_index}")

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def prompt_table(self, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(prompts, index): the one prompt when the batch holds one task (index None), else a table of the
        tasks present, stacked, and each entry's place in it (the batch's table_index, on the device)."""
        if not self.placement.learned:
            return None, None
        present = batch["host"].tasks
        if len(present) == 1:
            prompt, index = self.prompts[self.tasks[present[0]].name](), None
        else:
            prompt, index = torch.stack([self.prompts[self.tasks[t].name]() for t in present]), batch["table_index"]
        if self.training and torch.is_grad_enabled():
            # every prompt takes part in every training step (absent tasks with a zero gradient): each
            # rank then runs the same ZeRO gathers and reductions, and AdamW treats a task the same
            # whether or not this rank's rows had it, so results do not depend on the world size
            absent = [self.prompts[spec.name]().sum() * 0 for i, spec in enumerate(self.tasks) if i not in present]
            prompt = prompt + sum(absent) if absent else prompt
        return prompt, index

    def prompt_for(self, batch: dict) -> torch.Tensor | None:
        """The prompt of each entry: unbatched when the whole batch is one task, else stacked per entry."""
        prompt, index = self.prompt_table(batch)
        return prompt if index is None else prompt[index]

    def describe(self, batch: dict) -> dict:
        """The batch with its HostInfo (data/host.py); a batch that has one is returned as it is."""
        return batch if "host" in batch else describe(batch, [spec.type for spec in self.tasks])

    def row_capacity(self, max_length: int) -> int:
        """Tokens of a packed row left to its sequences: data.max_length, less a deep prefix (which sits in
        front of every sequence as keys, not in the row)."""
        return max_length - self.placement.prefix_length(self.num_virtual_tokens)

    def encode(self, batch: dict, past_key_values=None, use_cache: bool = False):
        """Run the backbone; returns the HF output (last_hidden_state [B, T, H], past_key_values).

        With `past_key_values` (decoding) the batch holds the new tokens and the attention mask of
        past + new tokens; shallow prompts are then already in the cache. A packed batch (segment_ids,
        data/packing.py) keeps its sequences apart in attention, each with its own positions and prompt.
        """
        batch = self.describe(batch)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = self.base.get_input_embeddings()(ids)
        first_pass = past_key_values is None  # when decoding, shallow prompts are already in the cache
        placement = self.placement
        needed = placement.needed(first_pass)
        packed = batch.get("segment_ids")
        offset = placement.prefix_length(self.num_virtual_tokens)
        prompt, prefix_ids = None, None
        if needed and packed is not None and placement.prefix:
            prompt, index = self.prompt_table(batch)  # one entry per task present, not per sequence
            if index is not None:
                count = packed.amax(1) + 1  # sequences per row
                first = count.cumsum(0) - count  # each row's first sequence
                prefix_ids = index[first[:, None] + packed.clamp(min=0)]
        elif needed:
            prompt = self.prompt_for(batch)
        if placement.soft and first_pass:
            soft = prompt.to(embeds.dtype)
            soft = soft.expand(batch["host"].sequences, -1, -1) if soft.dim() == 2 else soft
            embeds = embeds.masked_scatter(batch["soft_mask"].unsqueeze(-1), soft)
        if packed is not None:
            positions = batch["position_ids"] + offset
        else:
            positions = ((mask.long().cumsum(-1) - 1).clamp(min=0) + offset)[:, -ids.shape[1] :]
        prefix = PrefixKV(
            prompt if placement.prefix else None, self.attention_impl, packed, prefix_ids, padded=batch["host"].padded
        )
        with placement.entered(self, prompt if needed else None, batch):
            return self.backbone(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=past_key_values,
                use_cache=use_cache,
                ptune_prefix=prefix,
            )

    def forward(self, batch: dict) -> objectives.Output:
        batch = self.describe(batch)
        hidden = self.encode(batch).last_hidden_state
        if "segment_ids" in batch and batch["host"].task_type != "generation":
            hidden, batch = unpack(hidden, batch)  # losses and predictions per sequence, exactly as unpacked
        return objectives.compute(self, hidden, batch)
