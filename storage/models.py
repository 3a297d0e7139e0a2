"""The history schema (SQLAlchemy 2.0 typed models). Migrations in storage/migrations create the same tables."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Generation(Base):
    """One request: its parameters, outcome and timings. Failed and cancelled requests are recorded too."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    checkpoint: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int | None] = mapped_column(BigInteger)  # up to 2^32-1: beyond a signed 32-bit column
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    num_images: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # running | ok | failed | cancelled | interrupted | blocked
    error: Mapped[str | None] = mapped_column(Text)
    encode_ms: Mapped[int | None] = mapped_column(Integer)
    denoise_ms: Mapped[int | None] = mapped_column(Integer)
    decode_ms: Mapped[int | None] = mapped_column(Integer)
    total_ms: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64), default="")
    placement: Mapped[str] = mapped_column(String(16), default="")
    app_version: Mapped[str] = mapped_column(String(32), default="")
    favorite: Mapped[bool] = mapped_column(Boolean, default=False)
    comparison_id: Mapped[str | None] = mapped_column(String(32))
    files_missing: Mapped[bool] = mapped_column(Boolean, default=False)  # set by start-up repair
    # What the generation started from (issue 17): txt2img | img2img | inpaint | outpaint | hires, the strength,
    # and the content addresses of the init image and mask in the data folder's sources/.
    mode: Mapped[str] = mapped_column(String(16), default="txt2img")
    strength: Mapped[float | None] = mapped_column(Float)
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    mask_sha256: Mapped[str | None] = mapped_column(String(64))

    images: Mapped[list[Image]] = relationship(
        back_populates="generation", cascade="all, delete-orphan", order_by="Image.position", lazy="selectin"
    )
    loras: Mapped[list[GenerationLora]] = relationship(
        back_populates="generation", cascade="all, delete-orphan", order_by="GenerationLora.position", lazy="selectin"
    )

    __table_args__ = (
        Index("ix_generations_checkpoint_id", "checkpoint", "id"),
        Index("ix_generations_favorite_id", "favorite", "id"),
        Index("ix_generations_comparison_id", "comparison_id"),
        # SQLite reuses the largest rowid once its row is deleted: "generation #64" would then name another image
        # for an API client or an open tab (migration 0004). PostgreSQL's sequences never hand an id out twice.
        {"sqlite_autoincrement": True},
    )

    def timings_ms(self) -> dict[str, int | None]:
        return {k: getattr(self, k) for k in ("encode_ms", "denoise_ms", "decode_ms", "total_ms")}


class Image(Base):
    """One output file of a generation. Paths are relative to the data folder."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(255))
    thumb_path: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)

    generation: Mapped[Generation] = relationship(back_populates="images")


class GenerationLora(Base):
    """A LoRA a generation ran with: its name in the LoRA folder, its file's AutoV3 hash (64 hex digits; empty when
    the run failed before the file was read), its weight and the checkpoint it was applied to."""

    __tablename__ = "generation_loras"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    hash: Mapped[str] = mapped_column(String(64), default="")
    weight: Mapped[float] = mapped_column(Float)
    checkpoint: Mapped[str] = mapped_column(String(16))

    generation: Mapped[Generation] = relationship(back_populates="loras")

    __table_args__ = (Index("ix_generation_loras_name_generation_id", "name", "generation_id"),)
