"""`run.json`: what training wrote about a run, as one typed record.

Training builds a `RunRecord` and the run directory writes it; evaluation, inference, the
registry, the monitor and export read it back through `RunDir.record()`. Unknown keys are kept
(`extra="allow"`) so that a run written by a newer version still loads, and every field that an
older version did not write has a default, so older run directories load too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specialize.constrain.contract import OutputContract
from specialize.errors import ConstraintError
from specialize.outputs import TaskKind


class BaseModelRecord(BaseModel):
    """The base model a run was trained on: what the user wrote and where its weights were."""

    model_config = ConfigDict(extra="allow")

    ref: str
    kind: str
    path: str
    model_id: str


class ExampleCounts(BaseModel):
    train: int = 0
    val: int = 0
    test: int = 0


class RunRecord(BaseModel):
    """The facts of one finished training run."""

    model_config = ConfigDict(extra="allow")

    base_model: BaseModelRecord | None = None  # every run training wrote has it; hand-made ones may not
    base_fingerprint: str | None = None
    method: str = "lora"  # lora | qlora | full | dpo | kto
    # The adapter flavour (config.MethodConfig.variant); runs from before variants were plain LoRA.
    variant: str = "lora"
    task: TaskKind | None = None
    labels: list[str] | None = None
    output_contract: dict[str, Any] | None = Field(
        None, description="The OutputContract training recorded (its to_dict()); None on runs made before."
    )
    examples: ExampleCounts = Field(default_factory=ExampleCounts)
    steps: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    train_seconds: float = 0.0
    resumed: bool = False
    supervised_tokens: int | None = None
    tokens_per_second: float | None = None
    precision: str = "fp32"
    attention: str = "default"
    trainable_parameters: int | None = None
    report_to: list[str] = Field(default_factory=list, description="Experiment trackers that got the logs.")
    finished_at: str | None = None
    # The parent run whose adapter was the start (method.from_run; None: a new adapter), for
    # preference runs also the reference. Preference runs (method dpo | kto) also record TRL's
    # beta and loss, and the last logged implicit-reward accuracy and margin (chosen minus
    # rejected reward) on training batches.
    from_run: str | None = None
    beta: float | None = None
    loss_type: str | None = None
    reward_accuracy: float | None = None
    reward_margin: float | None = None
    examples_per_second: float | None = None

    @field_validator("output_contract", mode="before")
    @classmethod
    def _valid_contract(cls, value: Any) -> Any:
        """A recorded contract must be one the decoder can enforce; say so when reading, not when serving."""
        if value is None:
            return None
        try:
            return OutputContract.from_dict(value).to_dict()
        except ConstraintError as exc:
            raise ValueError(str(exc)) from None

    def recorded_contract(self) -> OutputContract | None:
        """The contract training recorded, or None for runs made before contracts existed."""
        return OutputContract.from_dict(self.output_contract) if self.output_contract else None
