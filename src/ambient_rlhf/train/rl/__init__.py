"""``ambient rl``: policy optimisation against a reward model -- PPO, RLOO or REINFORCE.

    ambient rl --policy SFT_DIR --reward RM_DIR --data DATA_DIR --algo ppo --out OUT [--resume]

One iteration of :func:`train_rl` (the numbered comments in the loop are these steps):

1. take a batch of train-split prompts (left-padded, truncated from the left at
   ``max_prompt_tokens``); RLOO repeats each prompt ``rloo_k`` times;
2. generate with the KV cache (temperature 0.7, top-k off, top-p 1), truncate after EOS;
3. score prompt + response (the policy's own tokens) with the reward model (or a
   programmatic reward), times the gain plus the bias of ``reward_normalize`` (fitted on
   reference samples before step 1, or 1 and 0); replace the score of responses without
   EOS by ``missing_eos_score``;
4. reference log-probs from the frozen reference (with LoRA: the same model with the
   adapter disabled, so no second copy in memory); the policy's own log-probs too (with
   one minibatch, from the first training forward of step 7, drawn here: ``reuse_forward``);
5. values (PPO): a separate value model (initialised from the reward model by default,
   its one-output head on the scale of the scores) or a value head on the policy;
6. shaped rewards ``-beta * k1_t`` (none with ``kl.in_loss``) plus the score at the last
   response token, advantages
   (GAE for PPO; leave-one-out over the k samples of a prompt for RLOO; a mean or running
   baseline for REINFORCE), whitened;
7. optimisation epochs over shuffled minibatches (PPO: 4 epochs, clip 0.2, value clip
   0.2, vf_coef 0.1; RLOO/REINFORCE: one on-policy pass); ``kl.in_loss`` adds
   ``beta * k3`` to the loss;
8. update the KL controller; log metrics, samples and checkpoints.

Outputs in ``out``: the final policy (``save_pretrained``, loadable with
``AutoModelForCausalLM.from_pretrained(out)``) and its tokenizer, ``metrics.jsonl``,
``samples.jsonl``, ``manifest.json`` and ``checkpoints/step-N`` (everything needed to
continue bit-for-bit with ``--resume``).

One job per module: :mod:`.config` (:class:`RLConfig`, validated once), :mod:`.scorers`
(the reward of a rollout), :mod:`.setup` (prompt stream, value model, optimizers,
reference normalisation, checkpoints), :mod:`.loop` (:func:`train_rl`, the steps above).
The command line is :mod:`ambient_rlhf.cli.rl`.
"""

from ambient_rlhf.train.rl.config import KLSettings, RLConfig
from ambient_rlhf.train.rl.loop import train_rl
from ambient_rlhf.train.rl.scorers import (PythonScorer, RewardModelScorer, Scorer, TokenCountScorer, make_scorer,
                                           parse_token_ids, policy_only_ids)
from ambient_rlhf.train.rl.setup import load_prompts, prompt_indices

__all__ = ["KLSettings", "PythonScorer", "RLConfig", "RewardModelScorer", "Scorer", "TokenCountScorer", "load_prompts",
           "make_scorer", "parse_token_ids", "policy_only_ids", "prompt_indices", "train_rl"]
