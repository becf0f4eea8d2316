"""Trainers: one file per method, written out top to bottom (no base class), calling small helpers split
by concern — ``config`` (options, YAML), ``models`` (loading, LoRA, dropout, accelerator, optimizer),
``plan`` (which rows each step reads), ``metrics`` (metrics.jsonl, progress), ``checkpoint`` (exact
resume, final model), ``data`` (rows and tokenization), ``losses`` (pure functions), ``reference``
(response log-probs and the reference model, shared by DPO/KTO), ``distributed`` (several processes:
each rank's slice of a step's rows, sums over ranks), ``rollout`` (PPO sampling and
per-token scoring), ``rewards`` (reward functions), ``ppo_update`` (PPO/RLOO/GRPO advantages and update),
``ppo_outputs`` (samples, curves, value head), ``rl_distributed`` (the RL trainer on several processes) and
``vllm_rollout`` (rollouts sampled by an in-process vLLM, weights pushed after every update).

A trainer's life, top to bottom (see trainers/sft.py for the full example)::

    set_seed(config.seed)
    accelerator = make_accelerator(config)                          # first: sets up the process group
    model, tokenizer = load_model_and_tokenizer(config.model, **model_options(config))
    plan = plan_steps(len(train_rows), config)                     # steps per epoch, total steps
    optimizer, scheduler = make_optimizer_and_scheduler(model, config, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = 0
    if (ckpt := resume_checkpoint(config)) is not None:
        start = load_checkpoint(ckpt, accelerator, model, optimizer, scheduler, config, plan)["step"]
    logger = MetricsLogger(config.out, config, resume_step=start, main=accelerator.is_main_process)
    for step in range(start, plan.total_steps):
        shares = rank_shares(plan.micro_batches(step), accelerator)     # this rank's rows (all, on 1 process)
        ... forward / accelerator.backward / clip / optimizer.step / scheduler.step / zero_grad ...
        logger.log(step + 1, {...})                                    # metrics summed over ranks (all_sum)
        if (step + 1) % config.save_every == 0: save_checkpoint(config.out, step + 1, ...)
    save_final_model(config.out, accelerator, model, tokenizer)
"""
