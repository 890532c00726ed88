"""Behaviour cloning (SFT): fine-tune a causal LM on prompt -> response.

``ambient sft --data DIR --model M --out DIR [--resume] [--condition tier]``

The flow of :func:`train_sft`, top to bottom:

1. read the data directory's responses; select the train responses (all, top tier,
   top-k per thread, minimum score); with ``condition=tier`` keep every tier and put the
   response's tier token (``<|tier:good|>``...) at the start of the answer;
2. tokenise once: prompt (cut from the left) + response (cut from the right) + EOS; the
   loss is on response tokens only;
3. batches: the examples of one optimizer step (a *global batch* of
   ``per_device_train_batch_size * gradient_accumulation_steps * processes`` sequences) are fixed by ``seed`` and the epoch,
   never by how the batch is split, so 1x8 and 8x1 see the same data; with
   ``group_by_length`` global batches are formed from length-sorted windows (little
   padding), and inside a step the examples are length-sorted into micro-batches;
4. each step: loss = sum of response-token NLL / number of response tokens of the whole
   global batch (so gradient accumulation and several processes give the mean over the
   same tokens as one big batch); clip, AdamW, LR schedule;
5. every ``eval_steps`` steps: loss and perplexity on the valid split; every
   ``save_steps`` steps: sample completions for a fixed set of valid prompts into
   ``samples.jsonl`` and write a checkpoint (weights or adapter, optimizer, scheduler,
   RNG, data position, step);
6. the end: the output directory (``save_pretrained`` weights, merged when LoRA was
   used, with ``adapter/`` kept; tokenizer; ``metrics.jsonl``; ``samples.jsonl``;
   ``manifest.json``) replaces the working directory in one rename.

``--resume`` continues from the newest checkpoint in ``--out`` and reproduces the losses
of an uninterrupted run (data order is a function of seed and step, RNG states restored).
Which directories are used, resumed or refused is decided by :mod:`ambient_rlhf.outdir`,
the same for every stage.

One job per module: :mod:`.config` (:class:`SFTConfig`), :mod:`.data` (examples,
batches, evaluation, samples), :mod:`.loop` (:func:`train_sft`); the command line is
:mod:`ambient_rlhf.cli.sft`.
"""

from ambient_rlhf.train.sft.config import MODEL_INFO_FILE, SFTConfig
from ambient_rlhf.train.sft.data import (collate, encode_examples, epoch_batches, evaluate, read_responses,
                                        select_examples, split_step, write_samples)
from ambient_rlhf.train.sft.loop import train_sft

__all__ = ["MODEL_INFO_FILE", "SFTConfig", "collate", "encode_examples", "epoch_batches", "evaluate",
           "read_responses", "select_examples", "split_step", "train_sft", "write_samples"]
