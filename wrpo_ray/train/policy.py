"""Per-sequence log-probs of a causal LM through the fused kernel: no [tokens, vocab] logits in a step.

The backbone gives the final hidden states; `linear_logprobs` turns them and the lm_head weight into
per-token log-probs of the labels, chunk by chunk. Under ZeRO-3 the lm_head weight is partitioned and is
only gathered around the forward of a module that owns it, so the wrapper registers it as an external
parameter of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from wrpo_ray.kernels import linear_logprobs
from wrpo_ray.runtime import use_cpu_accelerator_if_no_gpu
from wrpo_ray.train.batching import IGNORE_INDEX, per_token_targets
from wrpo_ray.train.packing import PackedBatch, attention_masks


def load_causal_lm(path: str, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)


class SequenceLogprobs(nn.Module):
    """Wraps a HF causal LM; `forward` returns the summed log-prob of each sequence's labelled tokens."""

    def __init__(self, causal_lm: nn.Module) -> None:
        super().__init__()
        self.lm = causal_lm
        head = causal_lm.get_output_embeddings()
        self.softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        use_cpu_accelerator_if_no_gpu()
        import deepspeed

        deepspeed.zero.register_external_parameter(self, head.weight)
        if head.bias is not None:
            deepspeed.zero.register_external_parameter(self, head.bias)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.lm, self.lm.base_model_prefix)

    def forward(self, batch: PackedBatch | dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (summed log-probs [S], scored token counts [S]) for the batch's S sequences, example-major.

        One entry point for both layouts, so DeepSpeed's ZeRO-3 hooks (which gather the lm_head weight
        around this module's forward) run for either.
        """
        if isinstance(batch, PackedBatch):
            return self._packed(batch)
        return self._padded(batch["input_ids"], batch["attention_mask"], batch["labels"])

    def _padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets = per_token_targets(labels)
        head = self.lm.get_output_embeddings()
        seq_ids = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)
        out = linear_logprobs(hidden, head.weight, targets, bias=head.bias, softcap=self.softcap,
                              ignore_index=IGNORE_INDEX, seq_ids=seq_ids, num_seqs=labels.shape[0])
        return out.sequence, (targets != IGNORE_INDEX).sum(dim=1)

    def _packed(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        masks = attention_masks(self.lm.config, batch, self.lm.dtype)
        hidden = self.backbone(input_ids=batch.input_ids, position_ids=batch.position_ids,
                               attention_mask=masks).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        head = self.lm.get_output_embeddings()
        out = linear_logprobs(hidden.index_select(0, batch.predictors), head.weight, batch.targets,
                              bias=head.bias, softcap=self.softcap, ignore_index=IGNORE_INDEX,
                              seq_ids=batch.seq_ids, num_seqs=batch.num_seqs)
        return out.sequence, torch.bincount(batch.seq_ids, minlength=batch.num_seqs)
