"""Vision-language models: a CLIP-pretrained ViT-lite and three connectors into the frozen book LM
(LLaVA's MLP projector, Flamingo's perceiver resampler + gated cross-attention, BLIP-2's Q-Former) on
generated scenes with templated questions.

``scenes`` (data), ``models`` (encoder, CLIP loss, connectors), ``experiment`` (the closed loop),
``report`` (criteria, ``run``, cross-checks with HF transformers, figures).
"""

from llmcore.architecture.vlm.experiment import (
    CONNECTORS,
    VLM,
    ConnectorResult,
    VLMConfig,
    VLMResult,
    answer,
    encode_captions,
    encode_vqa,
    exact_match,
    experiment,
    zero_shot,
    zero_shot_captions,
)
from llmcore.architecture.vlm.models import (
    CLIP,
    GatedCrossAttention,
    LlavaProjector,
    PerceiverResampler,
    QFormer,
    ViTLite,
    clip_loss,
    flamingo_hidden,
    qformer_mask,
)
from llmcore.architecture.vlm.plots import (
    ask,
    plot_connectors,
    plot_retrieval_and_attention,
    plot_scenes,
    plot_training,
)
from llmcore.architecture.vlm.report import (
    clip_crosscheck,
    gate_zero_gap,
    hf_clip_loss,
    hf_projector,
    make_report,
    projector_crosscheck,
    run,
)
from llmcore.architecture.vlm.scenes import HELD_OUT, make_scenes

__all__ = [
    "CLIP", "CONNECTORS", "HELD_OUT", "VLM", "ConnectorResult", "GatedCrossAttention", "LlavaProjector",
    "PerceiverResampler", "QFormer", "VLMConfig", "VLMResult", "ViTLite", "answer", "ask", "clip_crosscheck",
    "clip_loss", "encode_captions", "encode_vqa", "exact_match", "experiment", "flamingo_hidden", "gate_zero_gap",
    "hf_clip_loss", "hf_projector", "make_report", "make_scenes", "plot_connectors", "plot_retrieval_and_attention",
    "plot_scenes", "plot_training", "projector_crosscheck", "qformer_mask", "run", "zero_shot", "zero_shot_captions",
]
