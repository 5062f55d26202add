"""LoRA fine-tuning: the SFT loop, packing and loss masks, the data plan, export, NER evaluation."""
