"""Models: the CLIP backbone and its weights (design.md "Backbone"), and the ICLF model parts."""

from iclf.models.registry import BackboneSpec, get_spec, list_backbones, register
from iclf.models.weights import (WeightsError, backbone_state_dict_openai_layout,
                                 load_clip_state_dict, load_pretrained, resize_pos_embed)
from iclf.models.clip import CLIPBackbone, create_backbone
from iclf.models.lora import (LoraSettings, adapter_parameters, adapter_state_dict, apply_lora,
                              count_trainable, expected_lora_params, load_adapter_state_dict,
                              merge_lora)
from iclf.models.fusion import Fusion
from iclf.models.heads import IDClassifier, ITMHead, MLMHead
from iclf.models.iclf import Features, ICLFModel, build_iclf_model
