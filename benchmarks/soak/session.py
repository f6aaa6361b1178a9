"""One client's connections (an official client per dialect, plus raw HTTP) and its dice."""

from __future__ import annotations

import random
from dataclasses import dataclass

import anthropic
import httpx
import ollama
import openai

from .plan import SoakPlan

WORDS = "the quick cat river mountain reads slowly bright garden city morning story".split()


@dataclass
class Session:
    plan: SoakPlan
    rng: random.Random
    http: httpx.AsyncClient
    ollama: ollama.AsyncClient
    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic

    @classmethod
    def open(cls, base_url: str, plan: SoakPlan, seed: int) -> Session:
        timeout = plan.request_timeout
        return cls(
            plan=plan,
            rng=random.Random(seed),
            http=httpx.AsyncClient(base_url=base_url, timeout=timeout),
            ollama=ollama.AsyncClient(host=base_url, timeout=timeout),
            # No retries: a retried request would hide the error it met.
            openai=openai.AsyncOpenAI(
                base_url=base_url + "/v1", api_key="soak", max_retries=0, timeout=timeout
            ),
            anthropic=anthropic.AsyncAnthropic(
                base_url=base_url, api_key="soak", max_retries=0, timeout=timeout
            ),
        )

    async def close(self) -> None:
        await self.http.aclose()
        await self.openai.close()
        await self.anthropic.close()
        await self.ollama.close()

    def prompt(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 12)))

    def tokens(self) -> int:
        return self.rng.randint(1, self.plan.max_tokens)

    def disconnect_after(self) -> int | None:
        """After how many chunks this stream is dropped (None: read to the end)."""
        if self.rng.random() < self.plan.disconnect_rate:
            return self.rng.randint(1, 3)
        return None

    def stream(self) -> bool:
        return self.rng.random() < 0.6
