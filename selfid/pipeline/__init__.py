"""Stages that put the other layers together: what runs before training (the self-distilled identity replay,
which samples the base model and judges its answers with the audit's scorers), so that nothing under
selfid/train imports the audit."""
