"""Part 3 — post-training and alignment: policy gradients, actor-critic, PPO, DPO, GRPO."""
