"""``train_reward``: the reward model's training, top to bottom."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import load_state, rng_state, save_checkpoint, seed_everything, set_rng_state
from ambient_rlhf.config import to_dict
from ambient_rlhf.data.tables import community_name
from ambient_rlhf.io import write_json, write_manifest
from ambient_rlhf.logging import MetricsWriter, get_logger, progress
from ambient_rlhf.models.features import FeatureStore
from ambient_rlhf.outdir import NOT_RESULT_KEYS, prepare_out
from ambient_rlhf.models.reward_inputs import RewardInputs, TextTable
from ambient_rlhf.rl import reward_losses as L
from ambient_rlhf.train.common import (apply_lora, make_optimizer, make_scheduler, merge_lora, setup_accelerator,
                                        warmup_count)
from ambient_rlhf.train.reward.batching import epoch_batches, loss_share, rank_share, shard_rows
from ambient_rlhf.train.reward.config import RewardConfig, _auto_lr, _validate, input_spec
from ambient_rlhf.train.reward.objective import (CovariateModel, batch_loss, fit_linear_bradley_terry,
                                                  unit_covariates)
from ambient_rlhf.train.reward.scoring import Scorer, ScoreRows, feature_moments, pair_accuracy, raw_rewards
from ambient_rlhf.train.reward.units import (balance_by_length, index_units, load_units, reference_units,
                                             subset_threads)
from ambient_rlhf.train.trackers import make_trackers

log = get_logger("rm")


def train_reward(cfg: RewardConfig) -> Path:
    """Train a reward model as configured; return its directory."""
    from ambient_rlhf.models.bodies import body_of, keep_first_layers
    from ambient_rlhf.models.heads import ScalarHeadModel
    from accelerate.utils import gather_object

    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer, resolve_model

    _validate(cfg)
    out = Path(cfg.out)
    # step 0. processes (one, or several under torchrun / accelerate launch), output directory
    accelerator = setup_accelerator(1, cfg.mixed_precision, cpu=None if cfg.device == "auto" else cfg.device == "cpu")
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    # the one output-dir policy: fresh, resume the same config, or refuse (another stage's
    # or config's output, or an out that overlaps an input); a finished run is left alone
    prepared = prepare_out(cfg.out, "rm", to_dict(cfg), cfg.resume, cfg.overwrite, accelerator,
                           inputs=[*cfg.data, cfg.model, cfg.feature_cache],
                           ignore=NOT_RESULT_KEYS + ("feature_cache",))  # a cache location changes no result
    if prepared.finished:
        log.warning("rm: %s is a finished run of this config; nothing to do", out)
        return out
    ckpt = prepared.checkpoint
    seed_everything(cfg.seed)
    device = accelerator.device
    t_start = time.time()

    # step 1. data: units of the objective, texts tokenised once
    tok = load_tokenizer(cfg.model, padding_side="right")
    # the reward model's inputs, rendered from the spec it saves with itself: rm eval, the RL
    # reward and ambient eval render them from that saved spec the same way
    spec = input_spec(cfg)
    table = TextTable(RewardInputs(tok, spec))
    counts: dict[str, Any] = {}
    train_units = load_units(cfg, "train", half=cfg.train_half, counts=counts)
    if cfg.balance_length:
        train_units = balance_by_length(train_units, cfg.seed, counts)
    train = index_units(subset_threads(train_units, cfg.max_train_units, cfg.seed), table)
    if not train:
        raise AmbientError(f"rm: no training {cfg.objective} units in {cfg.data} (split train, half {cfg.train_half})")
    # valid accuracy on the time-rule pairs, the text reward alone (what rm eval and RL see)
    # (with weight_decay_grid, which chooses on these pairs, each answer keeps its covariates)
    plain = dataclasses.replace(cfg, pairs="time_rule", covariates=cfg.covariates if cfg.weight_decay_grid else [])
    valid_pairs = index_units(subset_threads(load_units(plain, "valid", objective="pairwise", counts=counts),
                                             cfg.eval_max_pairs, cfg.seed), table)
    norm_units = index_units(subset_threads(reference_units(cfg), cfg.norm_max_responses, cfg.seed), table)
    select_pairs = valid_pairs if cfg.weight_decay_grid else []
    counts.update(train_units=len(train), train_threads=len({u.thread for u in train}), texts=len(table),
                  valid_pairs=len(valid_pairs), reference_responses=len(norm_units),
                  prompt_truncated=table.prompt_truncated, response_truncated=table.response_truncated)
    log.info("rm: %d train %s units, %d texts, %d valid pairs", len(train), cfg.objective, len(table), len(valid_pairs))

    # step 2. model: body + small head; choose what trains
    lm = load_causal_lm(cfg.model)
    if cfg.backbone_layers:
        have = len(body_of(lm).layers)
        if cfg.backbone_layers > have:
            raise AmbientError(f"rm: backbone_layers={cfg.backbone_layers} but {cfg.model} has {have} layers")
        keep_first_layers(lm, cfg.backbone_layers)
    kind = "tiers" if cfg.objective == "tiers" else "scalar"
    rm = ScalarHeadModel(lm, kind=kind, meta={"pooling": cfg.pooling})
    body = body_of(lm)
    n_layers = len(body.layers)
    if cfg.train_layers > n_layers:
        raise AmbientError(f"rm: train_layers={cfg.train_layers} but the model has {n_layers} layers")
    for p in lm.parameters():
        p.requires_grad_(cfg.train_layers == -1)
    out_emb, in_emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    for p in (out_emb.parameters() if out_emb is not None else ()):
        if in_emb is None or p is not in_emb.weight:  # the LM head is never used by a reward model:
            p.requires_grad_(False)                   # no gradient (and DDP wants one for every trained tensor)
    if cfg.train_layers > 0:
        for m in list(body.layers)[n_layers - cfg.train_layers:] + [body.norm]:
            for p in m.parameters():
                p.requires_grad_(True)
    if cfg.lora.enabled:
        rm.lm = apply_lora(lm, cfg.lora)
    rm.to(device).eval()  # dropout is off anyway; eval() keeps any stochastic layer quiet
    mode = "full"
    if cfg.train_layers >= 0 and cfg.cache_features:
        mode = "head" if cfg.train_layers == 0 else "top"
    store = (FeatureStore(cfg.feature_cache, resolve_model(cfg.model), cfg.backbone_layers, cfg.pooling)
             if (mode == "head" and cfg.feature_cache) else None)
    scorer = Scorer(rm, table, mode, cfg.train_layers, device, tok.pad_token_id, store)
    # a thread's responses run their common prompt once (top layers: where the body's cache allows)
    scorer.share_prompts = cfg.share_prompts and (mode != "top" or scorer.module.can_share_prompts)
    if mode == "top":
        probe = train[0].rows[:2]  # one unit's texts: with share_prompts the shared path is the one checked
        scorer.prepare(probe, cfg.batch_size)
        err = max(gather_object([scorer.check(probe)]))  # every process decides alike
        if err > 1e-3:
            log.warning("rm: cached top-layer path differs from the model by %.2g; not caching", err)
            scorer = Scorer(rm, table, "full", cfg.train_layers, device, tok.pad_token_id)
            scorer.share_prompts = cfg.share_prompts
            mode = "full"
    counts["mode"] = mode
    params = [p for p in scorer.module.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    log.info("rm: mode %s, %d trainable parameters, %d processes", mode, n_params, world)

    # step 3. cache what the frozen part computes (every text, once).  With several
    # processes each caches only what it scores: its shares of the training batches and
    # its shard of the evaluation texts; a feature store is written by each in turn.
    lengths = [len(x) for x in table.ids]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    if (cfg.weight_decay_grid or cfg.head_fit == "lbfgs") and world > 1:
        raise AmbientError("rm: weight_decay_grid and head_fit=lbfgs run in one process (the head on cached "
                           "features takes seconds); drop the launcher")
    if world == 1:
        need = sorted({r for u in train + valid_pairs + norm_units for r in u.rows})
    else:
        need_set = set(shard_rows(table, [r for u in valid_pairs for r in u.rows], rank, world))
        need_set |= set(shard_rows(table, [u.rows[0] for u in norm_units], rank, world))
        for e in range(math.ceil(total / steps_per_epoch)):
            for b in epoch_batches(train, lengths, cfg.batch_size, cfg.seed, e, cfg.length_grouped)[
                    : total - e * steps_per_epoch]:
                need_set.update(rank_share(b, world, rank)[1])
        need = sorted(need_set)
    n_new = scorer.prepare(need, max(cfg.batch_size * 2, 8), save=main)
    if store is not None and world > 1:
        for r in range(1, world):  # after the main process's save, one at a time
            accelerator.wait_for_everyone()
            if rank == r and n_new:
                store.save()
        accelerator.wait_for_everyone()

    if cfg.standardize_features and mode == "head":  # from the training texts' features
        train_rows = sorted({r for u in train for r in u.rows if r in scorer.cache})
        mean, std = feature_moments([scorer.cache[r] for r in train_rows], gather_object if world > 1 else None)
        scorer.module.standardize(mean.to(device), std.to(device))

    logwords: dict[int, float] = {}

    def logwords_of(rows_: list[int]) -> torch.Tensor | None:
        if cfg.length_decorrelation <= 0:
            return None
        for r_ in rows_:
            if r_ not in logwords:
                logwords[r_] = math.log1p(len(table.texts[r_][1].split()))
        return torch.tensor([logwords[r_] for r_ in rows_], device=device)

    # step 4. the training loop (after choosing the weight decay, when asked to)
    lr = _auto_lr(cfg)
    weight_decay = cfg.weight_decay
    t_select = time.perf_counter()
    if cfg.weight_decay_grid:
        if not select_pairs:
            raise AmbientError(f"rm: weight_decay_grid needs valid time-rule pairs to choose on; {cfg.data} has "
                               f"none in its valid split (give weight_decay instead)")
        weight_decay, counts["weight_decay_selection"] = _select_weight_decay(
            cfg, scorer, rm, train, select_pairs, lengths, steps_per_epoch, total, lr, device, logwords_of)
    select_seconds = time.perf_counter() - t_select
    # the covariate model (pairwise with covariates): trained with the reward, its
    # standardisation from the training pairs
    covm = CovariateModel.fit(cfg.covariates, train).to(device) if cfg.covariates else None
    trained = torch.nn.ModuleDict({"model": scorer.module, **({"covariates": covm} if covm is not None else {})})
    opt = make_optimizer(trained, lr=lr, weight_decay=weight_decay)  # fused AdamW
    params = [p for p in trained.parameters() if p.requires_grad]  # (gradient clipping)
    sched = make_scheduler(opt, cfg.lr_scheduler_type, warmup_count(cfg.warmup_steps, total), total)
    step = 0
    if ckpt is not None:
        state = load_state(ckpt)
        named = dict(trained.named_parameters())
        for k, v in state["trainable"].items():
            named[k].data.copy_(v.to(device))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = state["step"]
        log.warning("rm: resuming from %s (step %d of %d)", ckpt, step, total)
    # DDP around the trained part when there are several processes (else the module as is)
    step_fn, opt = accelerator.prepare(ScoreRows(scorer, covm), opt)
    t_loop = time.perf_counter()  # the fit: the training loop, or L-BFGS
    if cfg.head_fit == "lbfgs":  # the whole fit, here; no steps
        _fit_head_lbfgs(scorer, train, covm, weight_decay)
        total = step = 0
        counts["head_fit"] = "lbfgs"
    metrics = MetricsWriter(out, resume_step=step if ckpt is not None else None, enabled=main,
                            trackers=make_trackers(cfg.report_to, out, to_dict(cfg)) if main else ())

    def checkpoint(s: int) -> None:
        if main:
            trainable = {k: v.detach().cpu().clone() for k, v in trained.named_parameters() if v.requires_grad}
            save_checkpoint(out, s, {"step": s, "trainable": trainable, "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), "rng": rng_state(), "config": to_dict(cfg)})
        accelerator.wait_for_everyone()

    bar = progress(total=total, initial=step, desc=f"rm {cfg.objective}", unit="step") if main else None
    epoch_cache: tuple[int, list] = (-1, [])
    while step < total:
        epoch, k = divmod(step, steps_per_epoch)
        if epoch_cache[0] != epoch:
            epoch_cache = (epoch, epoch_batches(train, lengths, cfg.batch_size, cfg.seed, epoch, cfg.length_grouped))
        units = epoch_cache[1][k]  # the global batch, the same in every process
        t0 = time.perf_counter()
        mine, rows, out_rows, loss, acc = _batch_forward(cfg, rm, step_fn, covm, units, world, rank, device,
                                                         logwords_of)
        opt.zero_grad(set_to_none=True)
        if world > 1:
            # DDP averages gradients over processes: weigh each share so that the average
            # is the gradient of the whole batch's loss
            accelerator.backward(loss * (loss_share(cfg.objective, mine, units) * world))
        else:
            accelerator.backward(loss)
        gnorm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else torch.tensor(0.0)
        opt.step()
        sched.step()
        step += 1
        dt = time.perf_counter() - t0
        if world > 1:  # the logged loss and accuracy of the whole batch, from every share's outputs
            got = dict(gather_object([(r, out_rows[i].detach().float().cpu()) for i, r in enumerate(rows)]))
            every = sorted(got)
            with torch.no_grad():
                g_all = covm(unit_covariates(units, device)) if covm is not None else None
                loss, acc = batch_loss(cfg.objective, rm, torch.stack([got[r] for r in every]),
                                       {r: i for i, r in enumerate(every)}, units, g_all, logwords_of(every),
                                       cfg.length_decorrelation)
        all_rows = sorted({r for u in units for r in u.rows})
        row = {"rm/loss": loss.item(), "rm/accuracy": acc.item(), "rm/lr": sched.get_last_lr()[0],
               "rm/grad_norm": float(gnorm), "perf/step_seconds": dt, "perf/units": len(units),
               "perf/sequences": len(all_rows), "perf/tokens": sum(lengths[r] for r in all_rows),
               "epoch": step / steps_per_epoch}
        if valid_pairs and cfg.eval_steps > 0 and (step % cfg.eval_steps == 0 or step == total):
            row["rm/valid_accuracy"] = pair_accuracy(scorer, valid_pairs, max(cfg.batch_size * 2, 8), accelerator)
        metrics.log(step, row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['rm/loss']:.3f}", refresh=False)
        if (cfg.save_steps > 0 and step % cfg.save_steps == 0) or step == total:
            checkpoint(step)
    if bar is not None:
        bar.close()
    metrics.close()
    loop_seconds = time.perf_counter() - t_loop
    if mode == "head":
        scorer.module.fold()  # standardisation into the head: raw features from here on
    opt = sched = step_fn = None  # free the optimizer state before the evaluation loads the saved model
    accelerator.free_memory()  # (the accelerator's references too)

    # step 5. normalise on the reference responses (scored by all processes), save,
    # evaluate, manifest (the main process; the others return once the model is saved, so
    # a long evaluation holds no barrier, whose timeout is 10-30 minutes)
    if cfg.lora.enabled:
        rm.lm = merge_lora(rm.lm)
    ref = raw_rewards(scorer, [u.rows[0] for u in norm_units], max(cfg.batch_size * 2, 8), accelerator)
    mean, std = L.fit_normalization(torch.tensor([ref[r] for r in sorted(ref)])) if ref else (0.0, 1.0)
    if not ref:
        log.warning("rm: no valid-split responses; rewards are not normalised")
    counts["processes"] = world
    if not main:
        accelerator.wait_for_everyone()  # paired with the main process's, after its save
        return out
    rm.set_normalization(mean, std)
    rm.meta = {"objective": cfg.objective, **spec.to_meta(), "template": table.inputs.template,
               "communities": [community_name(d) for d in cfg.data], "train_layers": cfg.train_layers,
               "backbone_layers": cfg.backbone_layers,
               "train_data": [str(Path(d).resolve()) for d in cfg.data], "train_half": cfg.train_half,
               "base_model": cfg.model, "norm_reference": {"split": "valid", "n": len(ref)},
               "pairs": cfg.pairs, "length_decorrelation": cfg.length_decorrelation}
    if cfg.pooling != "last":
        rm.meta["pooling"] = cfg.pooling
    if cfg.standardize_features:
        rm.meta["standardize_features"] = True  # provenance: the saved head has it folded in
    if cfg.weight_decay_grid:
        rm.meta["weight_decay"] = weight_decay  # chosen on the valid pairs (manifest: every candidate's loss)
    if covm is not None:  # the non-text part of the preference model: for reading, not for scoring
        rm.meta["covariate_model"] = covm.describe()
    rm.cpu()
    rm.save_pretrained(out, tok)  # reward_config.json is written last: it marks a complete model
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {}
    if cfg.eval_split:
        from ambient_rlhf.eval.reward_eval import evaluate_reward

        per = {}
        for d in cfg.data:
            name = community_name(d)
            per[name] = evaluate_reward(out, d, split=cfg.eval_split, out=out / "eval" / f"{name}-{cfg.eval_split}",
                                        loglik_model=cfg.eval_loglik, max_pairs=cfg.eval_max_pairs,
                                        batch_size=max(cfg.batch_size * 2, 8), seed=cfg.seed,
                                        feature_cache=cfg.feature_cache or None)
        result = next(iter(per.values())) if len(per) == 1 else {"communities": per}
        write_json(out / "eval.json", result)
    write_manifest(out, "rm", to_dict(cfg), inputs=[*cfg.data, resolve_model(cfg.model)], counts=counts,
                   normalization={"mean": mean, "std": std}, trainable_parameters=n_params, steps=total,
                   timings={"total_seconds": round(time.time() - t_start, 2), "loop_seconds": round(loop_seconds, 3),
                            "weight_decay_selection_seconds": round(select_seconds, 3)})
    return out


def _batch_forward(cfg: RewardConfig, rm, step_fn, covm, units: list, world: int, rank: int, device, logwords_of):
    """This process's share of a global batch scored and its loss: ``(mine, rows,
    out_rows, loss, accuracy)`` (each distinct text of the share scored once)."""
    mine, rows = rank_share(units, world, rank)  # one process: all of it
    pos = {r: i for i, r in enumerate(rows)}
    cov = unit_covariates(mine, device) if covm is not None and mine else None
    out_rows, g = step_fn(rows, cov)
    if mine:
        loss, acc = batch_loss(cfg.objective, rm, out_rows.float(), pos, mine, g, logwords_of(rows),
                               cfg.length_decorrelation)
    else:
        loss, acc = out_rows.float().sum() * 0.0, torch.tensor(float("nan"))
    return mine, rows, out_rows, loss, acc


def valid_log_loss(pairs: list, reward: dict[int, float], covm: CovariateModel | None) -> float:
    """Mean ``-log sigmoid(margin)`` over pairwise units (chosen first), the margin being the
    text rewards' difference plus -- when the preference model has a ``length`` covariate --
    its length term's difference: the text reward as RL uses it, with length added back as
    ``rm eval``'s beyond-length test does (exposure terms are left out: on time-rule pairs,
    where the later answer is always chosen, they point the wrong way by construction)."""
    j = covm.names.index("length") if covm is not None and "length" in covm.names else None
    total = 0.0
    for u in pairs:
        m = reward[u.rows[0]] - reward[u.rows[1]]
        if j is not None:
            m += float(covm.w[j].detach()) * (u.cov[0][j] - u.cov[1][j]) / float(covm.std[j])
        total += math.log1p(math.exp(-m)) if m > -30 else -m
    return total / len(pairs)


def _select_weight_decay(cfg: RewardConfig, scorer: Scorer, rm, train: list, pairs: list, lengths: list[int],
                         steps_per_epoch: int, total: int, lr: float, device, logwords_of) -> tuple[float, dict]:
    """Train the head from the same start once per ``cfg.weight_decay_grid`` value (the run's
    batches, schedule and covariate warm start) and return the value with the lowest
    :func:`valid_log_loss`, with every candidate's loss and accuracy.  The head's start and the
    RNG are restored afterwards, so the run then trains as if given the chosen value."""
    import copy

    start, rng = copy.deepcopy(scorer.module.state_dict()), rng_state()
    rows = sorted({r for u in pairs for r in u.rows})
    bs = max(cfg.batch_size * 2, 8)
    tried: dict[str, dict] = {}
    bar = progress(total=len(cfg.weight_decay_grid) * total, desc="rm weight_decay_grid", unit="step")
    for wd in cfg.weight_decay_grid:
        scorer.module.load_state_dict(start)
        covm = CovariateModel.fit(cfg.covariates, train).to(device) if cfg.covariates else None
        if cfg.head_fit == "lbfgs":
            _fit_head_lbfgs(scorer, train, covm, wd)
            bar.update(total)
        else:
            _adamw_head(cfg, scorer, rm, train, covm, wd, lengths, steps_per_epoch, total, lr, device, logwords_of, bar)
        with torch.no_grad():
            r = raw_rewards(scorer, rows, bs)
        tried[repr(wd)] = {"valid_log_loss": round(valid_log_loss(pairs, r, covm), 6),
                           "valid_accuracy": round(sum(r[u.rows[0]] > r[u.rows[1]] for u in pairs) / len(pairs), 4)}
        log.info("rm: weight_decay=%g -> valid log-loss %.4f, text-reward accuracy %.3f (%d pairs)", wd,
                 tried[repr(wd)]["valid_log_loss"], tried[repr(wd)]["valid_accuracy"], len(pairs))
    bar.close()
    best = min(cfg.weight_decay_grid, key=lambda w: tried[repr(w)]["valid_log_loss"])  # first of ties
    scorer.module.load_state_dict(start)
    set_rng_state(rng)
    log.warning("rm: weight_decay=%g chosen on %d valid pairs (grid %s)", best, len(pairs), cfg.weight_decay_grid)
    return float(best), {"grid": list(cfg.weight_decay_grid), "pairs": len(pairs), "chosen": float(best),
                         "criterion": "valid log-loss of the text reward plus the length term", "tried": tried}


def _adamw_head(cfg: RewardConfig, scorer: Scorer, rm, train: list, covm, wd: float, lengths: list[int],
                steps_per_epoch: int, total: int, lr: float, device, logwords_of, bar) -> None:
    """The run's AdamW steps on the head alone (one process), for one weight decay."""
    trained = torch.nn.ModuleDict({"model": scorer.module, **({"covariates": covm} if covm is not None else {})})
    opt = make_optimizer(trained, lr=lr, weight_decay=wd)
    params = [p for p in trained.parameters() if p.requires_grad]
    sched = make_scheduler(opt, cfg.lr_scheduler_type, warmup_count(cfg.warmup_steps, total), total)
    step_fn, batches = ScoreRows(scorer, covm), (-1, [])
    for step in range(total):
        epoch, k = divmod(step, steps_per_epoch)
        if batches[0] != epoch:
            batches = (epoch, epoch_batches(train, lengths, cfg.batch_size, cfg.seed, epoch, cfg.length_grouped))
        loss = _batch_forward(cfg, rm, step_fn, covm, batches[1][k], 1, 0, device, logwords_of)[3]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        bar.update(1)


def _fit_head_lbfgs(scorer: Scorer, train: list, covm: CovariateModel | None, l2: float) -> None:
    """``head_fit=lbfgs``: set the head (and the covariate weights) to the ridge
    Bradley-Terry fit on the cached features of the training pairs
    (:func:`~.objective.fit_linear_bradley_terry`), in the head's input space (standardised
    when ``standardize_features``); the head's bias, which cancels in every pair, is 0."""
    rows = sorted({r for u in train for r in u.rows})
    at = {r: i for i, r in enumerate(rows)}
    module = scorer.module
    x = torch.stack([scorer.cache[r] for r in rows]).double()
    if module.mean is not None:
        x = (x - module.mean.double().cpu()) / module.std.double().cpu()
    c = torch.tensor([at[u.rows[0]] for u in train])
    j = torch.tensor([at[u.rows[1]] for u in train])
    cov = None
    if covm is not None:
        both = torch.tensor([v for u in train for v in u.cov], dtype=torch.float64)  # (2P, k)
        cov = (both[0::2] - both[1::2]) / covm.std.double().cpu()
    weight = torch.tensor([u.weight for u in train], dtype=torch.float64)
    w, v = fit_linear_bradley_terry(x, c, j, cov, weight, l2=l2)
    with torch.no_grad():
        module.head.weight.copy_(w[None].to(module.head.weight))
        module.head.bias.zero_()
        if covm is not None:
            covm.w.copy_(v.to(covm.w))
