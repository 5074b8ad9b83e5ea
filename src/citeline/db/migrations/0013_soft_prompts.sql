-- Soft prompts (issue 19, item 4): the registry records peft prompt-tuning folders beside LoRA adapters. A
-- soft prompt has no LoRA rank and targets no module, so its row says rank 0 and target_modules '{}'
-- (citeline_adapter.json says the same, with kind 'soft_prompt'); a LoRA row still has a rank of at least 1,
-- which registration's preflight enforces. Safe to apply twice (the constraint is dropped, then added).
ALTER TABLE adapters DROP CONSTRAINT IF EXISTS adapters_rank_check;
ALTER TABLE adapters ADD CONSTRAINT adapters_rank_check CHECK (rank >= 0);
