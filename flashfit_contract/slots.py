"""The three model slots, each with its own vector store. Pure constants, no imports: flashfit's
CLI (doctor, backup) reads them without loading numpy or faiss."""

MODELS: tuple[str, ...] = ("clip", "blip", "fashion")
