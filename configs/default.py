r"""Default FACENet configuration: the paper's ResNet50 model with the paper's recipe.

Every experiment config starts from this one and overrides a few fields. Run with:

    python scripts/train.py --config configs/default.py --workdir runs/default \
        --config.data.root=/path/to/WMVeID863

Groups: data, model, loss, optim, train, eval. Derived values (steps per epoch, number of
classes) are computed at run time and logged, never stored here.

`config.model` depends on the model (`model_config(name)`): `name` (the registry key of
facenet_jax/models), `pretrained_path`, and exactly the fields of that model's Flax module, which
checks them (tests/test_config.py keeps the two in step). The model is chosen by the config
argument, not by overriding `--config.model.name` (the group's fields differ per model):

    python scripts/train.py --config configs/default.py:single_stream --workdir runs/rgb_only \
        --config.data.root=/path/to/WMVeID863 --config.model.modality=rgb
"""

import ml_collections


def _facenet_model() -> ml_collections.ConfigDict:
  """The paper's FACENet: three ResNet streams (`facenet_jax.models.facenet.FACENet`)."""
  model = ml_collections.ConfigDict()
  model.name = 'facenet'
  model.pretrained_path = ''        # converted ImageNet weights for all three streams ('' = random init)
  model.depth = 50                  # ResNet depth: 18 | 34 | 50 | 101
  model.last_stride = 1             # stride of the last ResNet stage (re-id uses 1)
  model.width_multiplier = 1.0      # stream width multiplier: 1 = the paper's ResNet; < 1 only for small studies; pretrained weights need 1
  model.plugin_layer = 4            # ResNet stage after which MFMP/FCE act (paper Table 4: 1..4)
  model.fmi_hidden_ratio = 0.25     # FMI conv-stack width as a fraction of C (paper silent)
  model.fmi_attention_ratio = 0.0625  # FMI SE-attention bottleneck as a fraction of C (paper silent; SE-Net 1/16)
  model.mask_similarity = 'sigmoid'  # Eq. 5's M_com: 'sigmoid' in (0, 1) | 'signed' 2 tanh(q*k): FMI can switch mask cells (see mfmp.py)
  model.conv_formulation = 'auto'   # streams' convs on accelerators: 'auto' cuDNN | 'matmul_1x1' | 'matmul' (resnet.CONV_FORMULATIONS); same function, speed only
  _flare_switches(model)
  return model


def _facenet_vit_model() -> ml_collections.ConfigDict:
  """The official code's FACENet: three ViT-B/16 streams (`FACENetViT`); defaults are ViT-B/16."""
  model = ml_collections.ConfigDict()
  model.name = 'facenet_vit'
  model.pretrained_path = ''        # ViT weights (timm .pth or JAX .npz) for streams and heads
  model.patch_size = 16             # patch side and stride (non-overlapping patches)
  model.embed_dim = 768             # token width D
  model.depth = 12                  # blocks; streams run blocks 0..depth-2, heads copy the last one
  model.num_heads = 12              # self-attention heads per block
  model.mlp_ratio = 4.0             # MLP hidden width as a multiple of D
  model.drop_path = 0.1             # stochastic depth of the last block (linear from 0 over depth)
  model.cross_attention_heads = 16  # MFMP cross-attention heads (official code: 16)
  model.cross_attention_dim_head = 768  # width per cross-attention head (official: 768, inner 12288)
  model.cross_attention_split = 'official'  # 'official' row-major reshape (windowed) | 'standard'
  model.cross_attention_dropout = 0.5  # dropout on the cross-attention output (official: 0.5)
  _flare_switches(model)
  return model


def _flare_switches(model: ml_collections.ConfigDict) -> None:
  """Fields both FACENet variants have."""
  model.dtype = 'float32'           # computation dtype: 'float32' | 'bfloat16' (params stay float32)
  model.mfmp = True                 # Mutual Flare Mask Prediction (SMP + FMI), paper Sec. 3.2
  model.fmi = True                  # FMI on: masks from the joint RGB+NI feature; off: SMP per modality
  model.fce = True                  # Flare-aware Cross-modal Enhancement, Eq. 7
  model.fce_gate = 'label'          # FCE on samples whose own pseudo-label is set ('label', Sec. 3.3) | 'all' samples (control)
  model.flare_head_input = 'mask'   # SMP flare classifier reads GAP of the mask M_S ('mask') or of m_S ('mask_logits')
  model.mask_estimator = 'sigmoid'  # how Delta gets a gradient: 'sigmoid' relaxation | 'straight_through'
  model.mask_temperature = 1.0      # temperature of the relaxed mask sigmoid((m - Delta) / T)
  model.test_time_fce = True        # apply FCE at test time, gated by each sample's own pseudo-label
  model.neck_feat = 'before'        # test embedding from features 'before' or 'after' the BNNeck
  model.flare_head_bias = True      # flare classifier with a bias (learns the flare prior); official: False
  model.identical_stream_init = True  # NI and TI streams start as copies of RGB (paper: one ImageNet init)
  # Official-code bugs, reproduced only when switched on explicitly.
  model.bug_rgb_uses_ni_mask = False   # RGB keeps f_R * (1 - M_N) instead of (1 - M_R)
  model.bug_batch_level_gating = False # enhance the whole batch when any sample is flared
  model.bug_dead_threshold = False     # hard mask 1[m > 0]: Delta never learns


def _single_stream_model() -> ml_collections.ConfigDict:
  """One ResNet stream on one modality (`facenet_jax.models.single_stream.SingleStream`)."""
  model = ml_collections.ConfigDict()
  model.name = 'single_stream'
  model.pretrained_path = ''        # converted ImageNet ResNet weights for the stream ('' = random init)
  model.modality = 'rgb'            # the one image the model sees: 'rgb' | 'ni' | 'ti'
  model.depth = 50                  # ResNet depth: 18 | 34 | 50 | 101
  model.last_stride = 1             # stride of the last ResNet stage (re-id uses 1)
  model.width_multiplier = 1.0      # stream width multiplier: 1 = the standard ResNet; pretrained weights need 1
  model.dtype = 'float32'           # computation dtype: 'float32' | 'bfloat16' (params stay float32)
  model.neck_feat = 'before'        # test embedding from the feature 'before' or 'after' the BNNeck
  return model


def _agw_model() -> ml_collections.ConfigDict:
  """AGW, the cross-modality baseline (`facenet_jax.models.agw.AGW`)."""
  model = ml_collections.ConfigDict()
  model.name = 'agw'
  model.pretrained_path = ''        # converted ImageNet ResNet weights for both stems and the stages
  model.depth = 50                  # ResNet depth: 18 | 34 | 50 | 101
  model.last_stride = 1             # stride of layer4 (AGW: 1)
  model.width_multiplier = 1.0      # ResNet width multiplier: 1 = the standard ResNet; pretrained weights need 1
  model.dtype = 'float32'           # computation dtype: 'float32' | 'bfloat16' (params stay float32)
  model.nonlocal_blocks = True      # non-local attention after layer2 blocks 2-3 and layer3 blocks 3-5
  model.bug_nonlocal_one_channel = False  # official code: 1 attention channel instead of C / 2
  model.pooling = 'gem'             # 'gem' (AGW) | 'avg'
  model.gem_p = 3.0                 # GeM exponent (fixed, as the official code)
  model.neck_feat = 'after'         # test embedding: BNNeck output ('after', official) | 'before'
  return model


def _deen_model() -> ml_collections.ConfigDict:
  """DEEN (`facenet_jax.models.deen.DEEN`)."""
  model = ml_collections.ConfigDict()
  model.name = 'deen'
  model.pretrained_path = ''        # converted ImageNet ResNet weights for both stems and the stages
  model.depth = 50                  # ResNet depth: 18 | 34 | 50 | 101
  model.last_stride = 1             # stride of layer4 (DEEN: 1)
  model.width_multiplier = 1.0      # ResNet width multiplier: 1 = the standard ResNet; pretrained weights need 1
  model.dtype = 'float32'           # computation dtype: 'float32' | 'bfloat16' (params stay float32)
  model.dee_after_stage = 3         # 3: MFA1-3, DEE, layer4 (SYSU-MM01, LLCM) | 2: RegDB (no MFA3, no layer4)
  model.dee_dropout = 0.01          # dropout on the expanded batch (official 0.01)
  return model


def _fsc_net_model() -> ml_collections.ConfigDict:
  """FSC-Net (`facenet_jax.models.fscnet.FSCNet`): DEEN + FSA / GCA / SPT in the DEE branches."""
  model = _deen_model()
  model.name = 'fsc_net'
  model.fsa = True                  # frequency block (rfft2 attention) on/off
  model.gca = True                  # gated channel block on/off
  model.spt = True                  # spatial block on/off
  model.gca_drop_path = 0.01        # DropPath rate inside GCA (official 0.01)
  model.gca_drop_path_placement = 'after_residual'  # as coded | 'branch': the usual x + DropPath(y)
  return model


def _dndm_model() -> ml_collections.ConfigDict:
  """DNDM (`facenet_jax.models.dndm.DNDM`): the paper's equations; the code's behaviour is
  configs/dndm_code_dn348.py. Needs `data.glare_mask` ('paper' or 'code')."""
  model = ml_collections.ConfigDict()
  model.name = 'dndm'
  model.pretrained_path = ''        # converted ImageNet ResNet weights for both stems and the stages
  model.depth = 50                  # ResNet depth: 18 | 34 | 50 | 101
  model.last_stride = 1             # stride of layer4 (paper: no last down-sampling)
  model.width_multiplier = 1.0      # ResNet width multiplier: 1 = the standard ResNet; pretrained weights need 1
  model.dtype = 'float32'           # computation dtype: 'float32' | 'bfloat16' (params stay float32)
  model.stem_pool = '2x2'           # stem max-pool: '2x2' (paper Eq. 3) | '3x3' (code, torchvision)
  model.ngs = True                  # night-domain glare suppression (Table 3)
  model.dse = True                  # dual-domain structure enhancement (Table 3)
  model.cca = True                  # cross-domain class awareness (Table 3)
  model.enhance_stages = (1, 2, 3, 4)  # stages followed by DSE + CCA (Table 4: 1 / 1-2 / 1-3 / 1-4)
  model.ngs_alpha = 0.5             # alpha of Eq. 6 (Fig. 4)
  model.ngs_relu = False            # code: ReLU before the NGS sigmoid (mask in [0.5, 1))
  model.dse_rule = 'paper'          # 'paper' Eq. 7-9 | 'code' 0.9 T + 0.25 ReLU(mean24 - T)
  model.dse_window = 5              # N of Eq. 7
  model.dse_beta = 0.25             # beta of Eq. 9 (Fig. 4)
  model.cca_rule = 'paper'          # 'paper' Eq. 10-13 | 'code' argmax map, 0.05 / 0.1 products
  model.pooling = 'avg'             # 'avg' (GAP, paper) | 'gem' (code)
  model.gem_p = 3.0                 # GeM exponent with pooling='gem'
  model.bnneck = True               # BNNeck before the classifier (BOT, code; Eq. 1 writes none: models/dndm.py)
  model.neck_feat = 'after'         # test embedding with a BNNeck: 'after' | 'before'
  return model


def _tsme_model() -> ml_collections.ConfigDict:
  """TSME stage 2 (`facenet_jax.models.tsme.TSME`); stage 1 is configs/tsme_dsgan.py."""
  model = ml_collections.ConfigDict()
  model.name = 'tsme'
  model.pretrained_path = ''        # converted ImageNet ResNet weights for the four streams
  model.depth = 50                  # ResNet depth of the four streams: 18 | 34 | 50 | 101
  model.width_multiplier = 1.0      # their width multiplier: 1 = the standard ResNet
  model.dtype = 'float32'           # computation dtype: 'float32' | 'bfloat16' (params stay float32)
  model.generator_workdir = ''      # the stage-1 workdir (scripts/train_dsgan.py); required
  model.generator_depth = 50        # the stage-1 generators' encoder depth (checked at load)
  model.generator_width_multiplier = 1.0  # and width
  model.test_feature = 'fc'         # test embedding: 'fc' l2(y_1..y_6) (official) | 'pool5' stripes
  return model


MODEL_CONFIGS = {'facenet': _facenet_model, 'facenet_vit': _facenet_vit_model,
                 'single_stream': _single_stream_model, 'agw': _agw_model, 'deen': _deen_model,
                 'fsc_net': _fsc_net_model, 'dndm': _dndm_model, 'tsme': _tsme_model}
# Loss fields a model needs set otherwise than below: IC (Eq. 8) compares the RGB and NI branches,
# which a single-stream model (and AGW, one branch) does not have; AGW's triplet is WRT.
MODEL_LOSS_OVERRIDES = {'single_stream': {'ic': False},
                        'agw': {'ic': False, 'triplet_kind': 'wrt'},
                        'deen': {'ic': False}, 'fsc_net': {'ic': False},
                        'dndm': {'ic': False, 'triplet_kind': 'cross_domain'},
                        'tsme': {'ic': False}}


def model_config(name: str) -> ml_collections.ConfigDict:
  """A fresh `config.model` group for the registered model `name`."""
  if name not in MODEL_CONFIGS:
    raise ValueError(f'No model config for {name!r}; known: {sorted(MODEL_CONFIGS)}')
  return MODEL_CONFIGS[name]()


def get_config(model: str = 'facenet') -> ml_collections.ConfigDict:
  """The default config with the `config.model` group of `model` (a `MODEL_CONFIGS` key)."""
  config = ml_collections.ConfigDict()

  # ---------------------------------------------------------------- data
  data = config.data = ml_collections.ConfigDict()
  data.dataset = 'wmveid863'        # 'wmveid863' | 'rgbnt100' | 'msvr310' | 'synthetic' | a cross-modality set
  data.root = ''                    # dataset root on local disk (never downloaded)
  data.source = 'folder'            # 'folder': read the image tree; 'tfds': read prepared TFDS shards
  data.tfds_data_dir = ''           # where `tfds` keeps prepared shards ('' = TFDS default)
  data.image_size = (256, 128)      # (H, W) network input; the paper says 128x256, WMVeID863 code 256x128
  data.num_ids_per_batch = 8        # P: distinct identities per training batch
  data.num_instances = 4            # K: triplets per identity in a batch (P x K = global batch)
  data.eval_batch_size = 64         # query/gallery batch (padded, with a mask)
  data.prescan = True              # decode every image once before training (bad files fail fast, all listed)
  data.num_val_ids = 0              # training ids held out as a validation split for model selection
  data.flare_rule = 'paper'         # 'paper': >10% of values in [250,255], per modality;
                                    # 'official': >=9.5% in the image's own top 2%, RGB and NI jointly
  data.shared_augmentation = True   # one random flip/crop for all three modalities (keeps them aligned);
                                    # False draws per modality as the official code does
  data.hflip_prob = 0.5             # horizontal flip probability
  data.pad_pixels = 10              # zero padding before the random crop
  data.random_erasing_prob = 0.0    # random erasing (official configs set 0.5 but it is commented out)
  data.grayscale_prob = 0.0         # cross-modality sets: turn a training image grey (DEEN: 0.5)
  data.mean = (0.5, 0.5, 0.5)       # normalisation mean (official configs), same for all modalities
  data.std = (0.5, 0.5, 0.5)        # normalisation std
  data.cache_images = True          # keep decoded uint8 images in memory after the first read
  data.num_parallel_calls = -1      # tf.data map parallelism (-1 = AUTOTUNE)
  data.prefetch_batches = 2         # batches prefetched ahead of the train step
  data.normalize_on_device = True   # streams ship uint8 images (+ int32 erasing boxes); the compiled
                                    # step normalises and draws the erasing fill (facenet_jax/device_input.py);
                                    # False: float32 normalised on the host (NumPy erasing noise)
  data.seed = 0                     # sampler / augmentation seed (the model seed is train.seed)
  # Cross-modality sets only (sysu_mm01, regdb, llcm, dn348, dnwild; input_pipeline/cross_modal.py).
  data.direction = ''               # query -> gallery, e.g. 'infrared_to_visible' ('' = the dataset's first)
  data.search_mode = 'all'          # SYSU-MM01 gallery cameras: 'all' (1, 2, 4, 5) | 'indoor' (1, 2)
  data.trial = 1                    # RegDB split 1..10 (one model per split)
  data.use_npy_cache = False        # SYSU-MM01 training images from the official .npy cache
  data.glare_mask = ''              # DNDM's glare prompt stream 'glare': '' (none) | 'paper' | 'code' (input_pipeline/glare_mask.py)
  data.glare_threshold = 220.0      # grey level above which a night pixel is glare (DNDM: 220)
  data.glare_min_region = 9         # 'paper' rule: glare regions smaller than this (pixels) are dropped (paper silent; ours)
  data.sampler_replacement = True   # two-pool sampler: K images per modality with replacement (AGW)

  # ---------------------------------------------------------------- model
  config.model = model_config(model)

  # ---------------------------------------------------------------- loss
  loss = config.loss = ml_collections.ConfigDict()
  loss.id_weight = 1.0              # cross-entropy per branch
  loss.label_smoothing = 0.0        # epsilon of label-smoothed CE (official configs: off)
  loss.triplet_weight = 1.0         # batch-hard triplet per branch
  loss.triplet_kind = 'batch_hard'  # 'batch_hard' (paper Eq. 11) | 'wrt' (AGW's weighted regularisation triplet) | 'cross_domain' (DNDM Eq. 2)
  loss.triplet_margin = 0.3         # hinge margin m (paper silent; 0.3 as in the code's SOLVER.MARGIN)
  loss.triplet_soft_margin = False  # soft-margin log(1 + exp(d_ap - d_an)) as the official code
  loss.triplet_normalize = False    # L2-normalise features before mining
  loss.flare_weight = 1.0           # weight of the flare loss L_f (Eq. 1)
  loss.flare_loss = 'bce'           # 'bce': 2-way CE on the pseudo-label (paper);
                                    # 'official_kl': min-direction KL between RGB and NI flare heads
  loss.ic = True                    # Inter-modality Consistency loss (Eq. 8)
  loss.ic_weight = 1.0              # weight of L_IC
  loss.ic_variant = 'paper'         # 'paper': KLmin(R, N), per-sample mean;
                                    # 'official': KLmin(R, N) + KLmin(T, N), mean over B x classes
  loss.relation = 'none'            # paper Table 5 alternatives: 'none' | '3m' | 'cdc' | 'hc'
  loss.relation_weight = 1.0        # weight of the relation loss
  loss.hc_distance = 'l2'           # 'hc' relation: 'l2' squared centre distance (HC paper) | 'cos' (official)
  loss.cpm_weight = 0.8             # DEEN / FSC-Net: cross-modality prototype margin loss weight
  loss.cpm_margin = 0.2             # DEEN / FSC-Net: its margin
  loss.ort_weight = 0.01            # DEEN / FSC-Net: orthogonality of the two expanded embeddings
  loss.hc_weight = 0.5              # TSME: hetero-centre loss weight per head (official 0.5)
  loss.ngs_attention_weight = 0.0   # DNDM: the official code's NGS attention loss (paper: none; code: 1)
  loss.update(MODEL_LOSS_OVERRIDES.get(model, {}))

  # ---------------------------------------------------------------- optim
  optim = config.optim = ml_collections.ConfigDict()
  optim.optimizer = 'adam'          # 'adam' (paper) | 'sgd' (official code)
  optim.base_lr = 3.5e-4            # paper: 3.5e-4
  optim.schedule = 'multistep'      # 'multistep' (paper) | 'cosine' (official, with linear warmup)
  optim.decay_epochs = (40, 70)     # multistep: epochs where the LR is multiplied by decay_factor
  optim.decay_factor = 0.1
  optim.warmup_epochs = 0           # linear warmup length (official: 5 / 10 / 100)
  optim.warmup_init_factor = 0.01   # warmup starts at this x base_lr (FACENet code 0.01; AGW family 0)
  optim.weight_decay = 5e-4         # L2 weight decay (paper silent; strong-baseline value)
  optim.momentum = 0.9              # SGD momentum
  optim.nesterov = False            # Nesterov SGD (AGW family: True)
  optim.bias_lr_factor = 1.0        # LR multiplier for biases (official: 2)
  optim.feature_lr_factor = 1.0     # LR multiplier of everything but the 'head*' modules (AGW family: 0.1)
  optim.grad_clip_norm = 0.0        # global-norm clipping (0 = off)
  optim.decay_all_params = False    # also decay biases and norm scales/biases (official code decays all)

  # ---------------------------------------------------------------- train
  train = config.train = ml_collections.ConfigDict()
  train.num_epochs = 120            # paper: 120
  train.seed = 1234                 # model init / dropout seed (official SOLVER.SEED)
  train.log_every_steps = 20        # official LOG_PERIOD
  train.checkpoint_every_steps = 200  # also saved at every epoch end and at the end of training
  train.keep_checkpoints = 3        # keep the last N step checkpoints (the best is kept separately)
  train.background_checkpoints = True  # step saves written by a background thread from a host copy
                                    # while training goes on (single process; facenet_jax/checkpointing.py)
  train.eval_every_epochs = 10      # validation (and test) evaluation period
  train.max_steps = 0               # stop after this many steps (0 = num_epochs x steps per epoch)
  # Multi-process (multi-host) runs, see facenet_jax/distributed.py and README "Multi-host training".
  train.distributed = False         # start jax.distributed (one process per host / per GPU)
  train.coordinator_address = ''    # 'host:port' of process 0 ('' = JAX_COORDINATOR_ADDRESS or detect)
  train.num_processes = 0           # 0 = JAX_NUM_PROCESSES or detect (SLURM, Open MPI, TPU, ...)
  train.process_id = -1             # -1 = JAX_PROCESS_ID or detect
  train.distributed_timeout_s = 300  # give up if the coordinator / a peer is not up by then
  train.heartbeat_timeout_s = 100   # a peer silent this long is declared dead (the run stops)

  # ---------------------------------------------------------------- eval
  eval_ = config.eval = ml_collections.ConfigDict()
  eval_.distance = 'euclidean_normalized'  # squared Euclidean on the L2-normalised embedding (official)
                                    # | 'euclidean' (paper: plain Euclidean, no normalisation) | 'cosine'
                                    # | 'dot' (-q.g, unnormalised: the AGW family's scripts)
  eval_.protocol = 'camera'         # junk rule: same pid & 'camera' (Market-1501) or same pid & 'scene';
                                    # cross-modality: 'sysu_single', 'sysu_multi', 'regdb', 'llcm', 'day_night'
  eval_.max_rank = 50               # CMC length
  eval_.cmc_mode = 'standard'       # or 'distinct_ids': the official SYSU-MM01/LLCM CMC (eval/protocols.py)
  eval_.flip_test = False           # add the embedding of the mirrored image (DEEN / FSC-Net / TSME test scripts)
  eval_.query_chunk_size = 1024     # distances are computed this many queries at a time
  eval_.rerank = False              # k-reciprocal re-ranking
  eval_.rerank_k1 = 20
  eval_.rerank_k2 = 6
  eval_.rerank_lambda = 0.3

  return config
