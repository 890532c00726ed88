"""Direct preference optimisation (DPO) straight from upvote pairs: no reward model, no
sampling, one stage.

``ambient dpo --data DATA_DIR --model SFT_DIR --out DIR [--loss dpo|cdpo|ipo|ln_dpo|rdpo] [--resume]``

The flow of :func:`train_dpo`, top to bottom (the numbered comments in the loop):

1. read the preferences of the train and valid splits: ``pairs.parquet`` (the time rule),
   every candidate pair of ``responses.parquet`` (``pairs=all``, pairs whose winner came
   first weighted by ``exposure_weight``) or every ordered pair of each thread's ranking
   (``pairs=ranking``, ``1/P`` each so every thread weighs the same); optionally balance
   or reweight "longer wins" against "shorter wins"; tokenise prompt + answer the SFT way
   (the model's chat template, prompt cut from the left, answer from the right, EOS);
2. the reference log-probs of every pair under the start model, once, cached in
   ``out/reference_logps.safetensors`` (the reference never changes; a resume reads them);
3. the policy: the start model (or the checkpoint's weights), LoRA through peft;
4. each step: a global batch of pairs fixed by seed and step (as SFT's, so resume,
   accumulation and processes see the same data), one forward+backward of the policy
   over the chosen and rejected sequences together, the loss of ``rl.dpo_losses`` as a
   weighted mean over the global batch; clip, AdamW, LR schedule;
5. at step 0, every ``eval_steps`` steps and the end: the valid pairs' loss, implicit
   reward margins and accuracy, log-probs, and the mean length of greedy answers to a few
   valid prompts; checkpoints every ``save_steps`` steps;
6. the output directory (merged weights, ``adapter/`` with LoRA, tokenizer,
   ``ambient_model.json``, metrics, samples, the reference cache, manifest) replaces the
   working directory in one rename.

One job per module: :mod:`.config` (:class:`DPOConfig`), :mod:`.data` (pairs, weights,
tokens, reference cache, evaluation), :mod:`.loop` (:func:`train_dpo`); the command line
is :mod:`ambient_rlhf.cli.dpo`; the losses are :mod:`ambient_rlhf.rl.dpo_losses`.
"""

from ambient_rlhf.train.dpo.config import DPOConfig
from ambient_rlhf.train.dpo.data import (REFERENCE_FILE, Example, Pair, adjust_for_length, cached_reference, collate,
                                        compute_reference, encode, load_pairs)
from ambient_rlhf.train.dpo.loop import train_dpo

__all__ = ["DPOConfig", "Example", "Pair", "adjust_for_length", "REFERENCE_FILE", "cached_reference", "collate", "compute_reference",
           "encode", "load_pairs", "train_dpo"]
