"""``ambient rm``: reward models from community feedback.

    ambient rm --data DIR [DIR ...] --model M --out OUT --objective pairwise|ranking|tiers|reply-sentiment
    ambient rm eval --model RM --data DIR [--split test]
    ambient rm combine RM1 RM2 [...] --weights w1,w2 --out DIR

The model is a :class:`~ambient_rlhf.models.heads.ScalarHeadModel`: the body of a causal
LM (best the SFT model) and a linear head read at the last real token of the text that
:mod:`ambient_rlhf.models.reward_inputs` renders from the reward model's own config
(template, community prefix, token budgets) -- the same rendering that ``rm eval``, the
RL reward and ``ambient eval`` use.

One job per module:

* :mod:`.config` -- :class:`RewardConfig`, validated once;
* :mod:`.units` -- training units of each objective read from data directories, subsets;
* :mod:`.batching` -- length-grouped batches, a pure function of (seed, epoch), and the
  shares of several processes;
* :mod:`.scoring` -- the trained part of the network on cached features / hidden states
  or on token ids, the objectives' batch losses;
* :mod:`.loop` -- :func:`train_reward`, the training, top to bottom in numbered steps;
* :mod:`.combine` -- ``rm combine``.

The command line lives in :mod:`ambient_rlhf.cli.rm`.
"""

from ambient_rlhf.data.tables import community_name, read_table
from ambient_rlhf.models.features import FeatureStore, text_key
from ambient_rlhf.models.reward_inputs import TextTable
from ambient_rlhf.train.reward.batching import epoch_batches, loss_share, rank_share, shard_rows, split_units
from ambient_rlhf.train.reward.combine import combine
from ambient_rlhf.train.reward.config import OBJECTIVES, RewardConfig
from ambient_rlhf.train.reward.loop import train_reward
from ambient_rlhf.train.reward.objective import batch_loss
from ambient_rlhf.train.reward.scoring import (HeadOnFeatures, Scorer, ScoreRows, TopLayers, pair_accuracy,
                                               raw_rewards, shared_prompt_outputs)
from ambient_rlhf.train.reward.units import (Unit, balance_by_length, half_of, index_units, load_units,
                                             reference_units, subset_threads)

__all__ = ["OBJECTIVES", "FeatureStore", "HeadOnFeatures", "RewardConfig", "Scorer", "ScoreRows", "TextTable",
           "TopLayers", "Unit", "balance_by_length", "batch_loss", "combine", "community_name", "epoch_batches",
           "half_of", "index_units", "load_units", "loss_share", "pair_accuracy", "rank_share",
           "raw_rewards", "read_table", "reference_units", "shard_rows", "shared_prompt_outputs",
           "split_units", "subset_threads", "text_key", "train_reward"]
