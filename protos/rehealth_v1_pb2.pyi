from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_VERSION: _ClassVar[Protocol]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_REFUSED: _ClassVar[ErrorCode]
    ERROR_CODE_DATA: _ClassVar[ErrorCode]
    ERROR_CODE_BUDGET: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_IN_STUDY: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHORIZED: _ClassVar[ErrorCode]
    ERROR_CODE_PROTOCOL: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]

class ColumnKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLUMN_KIND_UNSPECIFIED: _ClassVar[ColumnKind]
    COLUMN_KIND_CONTINUOUS: _ClassVar[ColumnKind]
    COLUMN_KIND_BINARY: _ClassVar[ColumnKind]

class Accountant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNTANT_UNSPECIFIED: _ClassVar[Accountant]
    ACCOUNTANT_RDP: _ClassVar[Accountant]
    ACCOUNTANT_PRV: _ClassVar[Accountant]
    ACCOUNTANT_GAUSSIAN: _ClassVar[Accountant]

class Estimator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESTIMATOR_UNSPECIFIED: _ClassVar[Estimator]
    ESTIMATOR_STRATIFIED: _ClassVar[Estimator]
    ESTIMATOR_DR: _ClassVar[Estimator]
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_VERSION: Protocol
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_REFUSED: ErrorCode
ERROR_CODE_DATA: ErrorCode
ERROR_CODE_BUDGET: ErrorCode
ERROR_CODE_NOT_IN_STUDY: ErrorCode
ERROR_CODE_UNAUTHORIZED: ErrorCode
ERROR_CODE_PROTOCOL: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
COLUMN_KIND_UNSPECIFIED: ColumnKind
COLUMN_KIND_CONTINUOUS: ColumnKind
COLUMN_KIND_BINARY: ColumnKind
ACCOUNTANT_UNSPECIFIED: Accountant
ACCOUNTANT_RDP: Accountant
ACCOUNTANT_PRV: Accountant
ACCOUNTANT_GAUSSIAN: Accountant
ESTIMATOR_UNSPECIFIED: Estimator
ESTIMATOR_STRATIFIED: Estimator
ESTIMATOR_DR: Estimator
TEXT_FIELD_NUMBER: _ClassVar[int]
text: _descriptor.FieldDescriptor

class SignedGrant(_message.Message):
    __slots__ = ("body", "signature", "key_id")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    body: str
    signature: str
    key_id: str
    def __init__(self, body: _Optional[str] = ..., signature: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class Covariate(_message.Message):
    __slots__ = ("name", "lo", "hi", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    lo: float
    hi: float
    kind: ColumnKind
    def __init__(self, name: _Optional[str] = ..., lo: _Optional[float] = ..., hi: _Optional[float] = ..., kind: _Optional[_Union[ColumnKind, str]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("name", "cap", "lo", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    LO_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    cap: float
    lo: float
    kind: ColumnKind
    def __init__(self, name: _Optional[str] = ..., cap: _Optional[float] = ..., lo: _Optional[float] = ..., kind: _Optional[_Union[ColumnKind, str]] = ...) -> None: ...

class BudgetSplit(_message.Message):
    __slots__ = ("describe", "ps_fit", "psm_stats", "balance")
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    PS_FIT_FIELD_NUMBER: _ClassVar[int]
    PSM_STATS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    describe: float
    ps_fit: float
    psm_stats: float
    balance: float
    def __init__(self, describe: _Optional[float] = ..., ps_fit: _Optional[float] = ..., psm_stats: _Optional[float] = ..., balance: _Optional[float] = ...) -> None: ...

class PrivacyQuery(_message.Message):
    __slots__ = ("epsilon", "delta", "split", "n_ps_rounds", "accountant", "resplit", "secure_nodes", "secure_aggregation", "estimator", "cap_round", "caps", "negative_controls", "negative_control_share")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    N_PS_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    RESPLIT_FIELD_NUMBER: _ClassVar[int]
    SECURE_NODES_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    CAP_ROUND_FIELD_NUMBER: _ClassVar[int]
    CAPS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_CONTROLS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_CONTROL_SHARE_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    split: BudgetSplit
    n_ps_rounds: int
    accountant: Accountant
    resplit: BudgetSplit
    secure_nodes: int
    secure_aggregation: bool
    estimator: Estimator
    cap_round: bool
    caps: _containers.RepeatedScalarFieldContainer[float]
    negative_controls: int
    negative_control_share: float
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., split: _Optional[_Union[BudgetSplit, _Mapping]] = ..., n_ps_rounds: _Optional[int] = ..., accountant: _Optional[_Union[Accountant, str]] = ..., resplit: _Optional[_Union[BudgetSplit, _Mapping]] = ..., secure_nodes: _Optional[int] = ..., secure_aggregation: _Optional[bool] = ..., estimator: _Optional[_Union[Estimator, str]] = ..., cap_round: _Optional[bool] = ..., caps: _Optional[_Iterable[float]] = ..., negative_controls: _Optional[int] = ..., negative_control_share: _Optional[float] = ...) -> None: ...

class Describe(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CapHist(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PsFit(_message.Message):
    __slots__ = ("beta",)
    BETA_FIELD_NUMBER: _ClassVar[int]
    beta: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, beta: _Optional[_Iterable[float]] = ...) -> None: ...

class PsmStats(_message.Message):
    __slots__ = ("beta", "edges", "slope")
    BETA_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    SLOPE_FIELD_NUMBER: _ClassVar[int]
    beta: _containers.RepeatedScalarFieldContainer[float]
    edges: _containers.RepeatedScalarFieldContainer[float]
    slope: bool
    def __init__(self, beta: _Optional[_Iterable[float]] = ..., edges: _Optional[_Iterable[float]] = ..., slope: _Optional[bool] = ...) -> None: ...

class PsmWsum(_message.Message):
    __slots__ = ("beta", "edges", "count", "max_weight", "center", "z_center")
    BETA_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    Z_CENTER_FIELD_NUMBER: _ClassVar[int]
    beta: _containers.RepeatedScalarFieldContainer[float]
    edges: _containers.RepeatedScalarFieldContainer[float]
    count: _containers.RepeatedScalarFieldContainer[float]
    max_weight: float
    center: _containers.RepeatedScalarFieldContainer[float]
    z_center: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, beta: _Optional[_Iterable[float]] = ..., edges: _Optional[_Iterable[float]] = ..., count: _Optional[_Iterable[float]] = ..., max_weight: _Optional[float] = ..., center: _Optional[_Iterable[float]] = ..., z_center: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoreHist(_message.Message):
    __slots__ = ("beta",)
    BETA_FIELD_NUMBER: _ClassVar[int]
    beta: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, beta: _Optional[_Iterable[float]] = ...) -> None: ...

class Reserve(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Cancel(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Operation(_message.Message):
    __slots__ = ("describe", "ps_fit", "psm_stats", "score_hist", "reserve", "cancel", "psm_wsum", "cap_hist")
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    PS_FIT_FIELD_NUMBER: _ClassVar[int]
    PSM_STATS_FIELD_NUMBER: _ClassVar[int]
    SCORE_HIST_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PSM_WSUM_FIELD_NUMBER: _ClassVar[int]
    CAP_HIST_FIELD_NUMBER: _ClassVar[int]
    describe: Describe
    ps_fit: PsFit
    psm_stats: PsmStats
    score_hist: ScoreHist
    reserve: Reserve
    cancel: Cancel
    psm_wsum: PsmWsum
    cap_hist: CapHist
    def __init__(self, describe: _Optional[_Union[Describe, _Mapping]] = ..., ps_fit: _Optional[_Union[PsFit, _Mapping]] = ..., psm_stats: _Optional[_Union[PsmStats, _Mapping]] = ..., score_hist: _Optional[_Union[ScoreHist, _Mapping]] = ..., reserve: _Optional[_Union[Reserve, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., psm_wsum: _Optional[_Union[PsmWsum, _Mapping]] = ..., cap_hist: _Optional[_Union[CapHist, _Mapping]] = ...) -> None: ...

class StudyQuery(_message.Message):
    __slots__ = ("protocol", "study_id", "treatment_column", "covariates", "outcomes", "ops", "sites", "privacy", "secure_scale", "grant", "design_terms", "chosen")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    COVARIATES_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    SECURE_SCALE_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    DESIGN_TERMS_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    study_id: str
    treatment_column: str
    covariates: _containers.RepeatedCompositeFieldContainer[Covariate]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    ops: _containers.RepeatedCompositeFieldContainer[Operation]
    sites: _containers.RepeatedScalarFieldContainer[str]
    privacy: PrivacyQuery
    secure_scale: float
    grant: SignedGrant
    design_terms: DesignTerms
    chosen: DesignTerms
    def __init__(self, protocol: _Optional[int] = ..., study_id: _Optional[str] = ..., treatment_column: _Optional[str] = ..., covariates: _Optional[_Iterable[_Union[Covariate, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ..., ops: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., sites: _Optional[_Iterable[str]] = ..., privacy: _Optional[_Union[PrivacyQuery, _Mapping]] = ..., secure_scale: _Optional[float] = ..., grant: _Optional[_Union[SignedGrant, _Mapping]] = ..., design_terms: _Optional[_Union[DesignTerms, _Mapping]] = ..., chosen: _Optional[_Union[DesignTerms, _Mapping]] = ...) -> None: ...

class DesignTerms(_message.Message):
    __slots__ = ("squares", "interactions", "sites", "hinges", "select")
    SQUARES_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    HINGES_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    squares: str
    interactions: _containers.RepeatedScalarFieldContainer[str]
    sites: _containers.RepeatedScalarFieldContainer[str]
    hinges: _containers.RepeatedScalarFieldContainer[str]
    select: str
    def __init__(self, squares: _Optional[str] = ..., interactions: _Optional[_Iterable[str]] = ..., sites: _Optional[_Iterable[str]] = ..., hinges: _Optional[_Iterable[str]] = ..., select: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("values", "shape")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[float]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DescribeReply(_message.Message):
    __slots__ = ("count", "sum_z", "sum_zz")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_Z_FIELD_NUMBER: _ClassVar[int]
    SUM_ZZ_FIELD_NUMBER: _ClassVar[int]
    count: Tensor
    sum_z: Tensor
    sum_zz: Tensor
    def __init__(self, count: _Optional[_Union[Tensor, _Mapping]] = ..., sum_z: _Optional[_Union[Tensor, _Mapping]] = ..., sum_zz: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PsFitReply(_message.Message):
    __slots__ = ("n", "g", "H", "loglik")
    N_FIELD_NUMBER: _ClassVar[int]
    G_FIELD_NUMBER: _ClassVar[int]
    H_FIELD_NUMBER: _ClassVar[int]
    LOGLIK_FIELD_NUMBER: _ClassVar[int]
    n: Tensor
    g: Tensor
    H: Tensor
    loglik: Tensor
    def __init__(self, n: _Optional[_Union[Tensor, _Mapping]] = ..., g: _Optional[_Union[Tensor, _Mapping]] = ..., H: _Optional[_Union[Tensor, _Mapping]] = ..., loglik: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PsmStatsReply(_message.Message):
    __slots__ = ("edges", "count", "sum_y", "sumsq_y", "sum_z", "sumsq_z", "zz_c", "zy_c", "slope_count", "slope_sum_y", "slope_sum_z", "nc_sum_y", "nc_sumsq_y", "sum3_y", "sum4_y")
    EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_Y_FIELD_NUMBER: _ClassVar[int]
    SUMSQ_Y_FIELD_NUMBER: _ClassVar[int]
    SUM_Z_FIELD_NUMBER: _ClassVar[int]
    SUMSQ_Z_FIELD_NUMBER: _ClassVar[int]
    ZZ_C_FIELD_NUMBER: _ClassVar[int]
    ZY_C_FIELD_NUMBER: _ClassVar[int]
    SLOPE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SLOPE_SUM_Y_FIELD_NUMBER: _ClassVar[int]
    SLOPE_SUM_Z_FIELD_NUMBER: _ClassVar[int]
    NC_SUM_Y_FIELD_NUMBER: _ClassVar[int]
    NC_SUMSQ_Y_FIELD_NUMBER: _ClassVar[int]
    SUM3_Y_FIELD_NUMBER: _ClassVar[int]
    SUM4_Y_FIELD_NUMBER: _ClassVar[int]
    edges: Tensor
    count: Tensor
    sum_y: Tensor
    sumsq_y: Tensor
    sum_z: Tensor
    sumsq_z: Tensor
    zz_c: Tensor
    zy_c: Tensor
    slope_count: Tensor
    slope_sum_y: Tensor
    slope_sum_z: Tensor
    nc_sum_y: Tensor
    nc_sumsq_y: Tensor
    sum3_y: Tensor
    sum4_y: Tensor
    def __init__(self, edges: _Optional[_Union[Tensor, _Mapping]] = ..., count: _Optional[_Union[Tensor, _Mapping]] = ..., sum_y: _Optional[_Union[Tensor, _Mapping]] = ..., sumsq_y: _Optional[_Union[Tensor, _Mapping]] = ..., sum_z: _Optional[_Union[Tensor, _Mapping]] = ..., sumsq_z: _Optional[_Union[Tensor, _Mapping]] = ..., zz_c: _Optional[_Union[Tensor, _Mapping]] = ..., zy_c: _Optional[_Union[Tensor, _Mapping]] = ..., slope_count: _Optional[_Union[Tensor, _Mapping]] = ..., slope_sum_y: _Optional[_Union[Tensor, _Mapping]] = ..., slope_sum_z: _Optional[_Union[Tensor, _Mapping]] = ..., nc_sum_y: _Optional[_Union[Tensor, _Mapping]] = ..., nc_sumsq_y: _Optional[_Union[Tensor, _Mapping]] = ..., sum3_y: _Optional[_Union[Tensor, _Mapping]] = ..., sum4_y: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreHistReply(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: Tensor
    def __init__(self, count: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PsmWsumReply(_message.Message):
    __slots__ = ("wsum", "nc_wsum", "dsum")
    WSUM_FIELD_NUMBER: _ClassVar[int]
    NC_WSUM_FIELD_NUMBER: _ClassVar[int]
    DSUM_FIELD_NUMBER: _ClassVar[int]
    wsum: Tensor
    nc_wsum: Tensor
    dsum: Tensor
    def __init__(self, wsum: _Optional[_Union[Tensor, _Mapping]] = ..., nc_wsum: _Optional[_Union[Tensor, _Mapping]] = ..., dsum: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class CapHistReply(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: Tensor
    def __init__(self, count: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StudyAnswers(_message.Message):
    __slots__ = ("describe", "ps_fit", "psm_stats", "score_hist", "psm_wsum", "cap_hist")
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    PS_FIT_FIELD_NUMBER: _ClassVar[int]
    PSM_STATS_FIELD_NUMBER: _ClassVar[int]
    SCORE_HIST_FIELD_NUMBER: _ClassVar[int]
    PSM_WSUM_FIELD_NUMBER: _ClassVar[int]
    CAP_HIST_FIELD_NUMBER: _ClassVar[int]
    describe: DescribeReply
    ps_fit: PsFitReply
    psm_stats: PsmStatsReply
    score_hist: ScoreHistReply
    psm_wsum: PsmWsumReply
    cap_hist: CapHistReply
    def __init__(self, describe: _Optional[_Union[DescribeReply, _Mapping]] = ..., ps_fit: _Optional[_Union[PsFitReply, _Mapping]] = ..., psm_stats: _Optional[_Union[PsmStatsReply, _Mapping]] = ..., score_hist: _Optional[_Union[ScoreHistReply, _Mapping]] = ..., psm_wsum: _Optional[_Union[PsmWsumReply, _Mapping]] = ..., cap_hist: _Optional[_Union[CapHistReply, _Mapping]] = ...) -> None: ...

class ReplyMeta(_message.Message):
    __slots__ = ("site", "seconds", "ops", "dataset", "epsilon_spent", "epsilon_budget", "epsilon_reserved", "epsilon_study")
    SITE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_RESERVED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_STUDY_FIELD_NUMBER: _ClassVar[int]
    site: str
    seconds: float
    ops: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    epsilon_spent: float
    epsilon_budget: float
    epsilon_reserved: float
    epsilon_study: float
    def __init__(self, site: _Optional[str] = ..., seconds: _Optional[float] = ..., ops: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., epsilon_spent: _Optional[float] = ..., epsilon_budget: _Optional[float] = ..., epsilon_reserved: _Optional[float] = ..., epsilon_study: _Optional[float] = ...) -> None: ...

class StudyReply(_message.Message):
    __slots__ = ("protocol", "meta", "answers")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    meta: ReplyMeta
    answers: StudyAnswers
    def __init__(self, protocol: _Optional[int] = ..., meta: _Optional[_Union[ReplyMeta, _Mapping]] = ..., answers: _Optional[_Union[StudyAnswers, _Mapping]] = ...) -> None: ...

class RiskRequest(_message.Message):
    __slots__ = ("protocol", "job", "grant")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    job: str
    grant: SignedGrant
    def __init__(self, protocol: _Optional[int] = ..., job: _Optional[str] = ..., grant: _Optional[_Union[SignedGrant, _Mapping]] = ...) -> None: ...
