"""Vision-language models: a CLIP-pretrained ViT-lite and three connectors into the frozen book LM
(LLaVA's MLP projector, Flamingo's perceiver resampler + gated cross-attention, BLIP-2's Q-Former) on
generated scenes with templated questions.

``scenes`` (data), ``models`` (encoder, CLIP loss, connectors), ``experiment`` (the closed loop),
``report`` (criteria, ``run``, cross-checks with HF transformers, figures).
"""
