"""Vision LLM over the OpenAI-compatible chat-completions API (vLLM, Ollama, llama.cpp, OpenAI).

>>> async def ask() -> LLMAnswer:
...     llm = OpenAIVisionLLM(settings.llm)
...     try:
...         return await llm.analyze(jpeg_bytes, "find the serial number", Grounding(ocr_text="SN-4X7Q-2291-B"))
...     finally:
...         await llm.aclose()
>>> asyncio.run(ask())  # doctest: +NORMALIZE_WHITESPACE
LLMAnswer(answer='The serial number is SN-4X7Q-2291-B.', model='fake-vl', prompt_tokens=100, completion_tokens=7,
          truncated=False, structured=None, reply=None)
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from sight.config import LLMSettings
from sight.engines.base import Grounding, LLMAnswer
from sight.errors import LLMError, LLMInvalidOutputError, LLMUnavailableError, StageTimeoutError

if TYPE_CHECKING:
    from sight.answers.schema import ResponseSchema

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a careful visual analyst. Answer the user's question about the image concisely and only "
    "from what is visible. If detector or OCR findings are given, use them as hints, but trust the image."
)
CONDENSE_PROMPT = (
    "You are given one question and the answers that were found for it in several images. "
    "Combine them into one concise answer to the question, naming the image each finding came from. "
    "If no image answers the question, say plainly: not found."
)
DEFAULT_QUERY = "Describe this image."
DEFAULT_FIELDS_QUERY = "Fill in the fields from this image."
# A backend answers 400 (422 for some) to a request field it does not know: then the schema goes in the prompt.
REFUSED_STATUS = {400, 422}
REFUSALS_TO_LEARN = 3
REMEMBERED_SCHEMAS = 256
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 10.0
# A chat completion's body is read up to this, whatever max_tokens says (a backend that ignores it must not fill
# the server's memory); past it the call fails. The answer itself is cut at max_tokens x this many bytes, a
# bound no tokenizer's tokens reach, and marked truncated.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
BYTES_PER_TOKEN = 16
SUGGESTED_OLLAMA_MODEL = "qwen2.5vl:3b"
SETUP_HINT = (f"start Ollama and `ollama pull {SUGGESTED_OLLAMA_MODEL}`, or set SIGHT_LLM__BASE_URL "
              "(vLLM, llama.cpp, any OpenAI-compatible server) and SIGHT_LLM__MODEL")


class _SchemaRefused(Exception):
    """The backend refused ``response_format``."""


def grounding_text(grounding: Grounding, *, numbered: bool = False) -> str:
    """What the other stages found, as the prompt gives it; ``numbered``: the OCR lines numbered from 1, for the
    model to cite."""
    parts: list[str] = []
    if grounding.detections:
        found = "; ".join(
            f"{d.name} ({d.confidence:.2f}) at [{d.box.x1:.0f}, {d.box.y1:.0f}, {d.box.x2:.0f}, {d.box.y2:.0f}]"
            for d in grounding.detections[:50]
        )
        parts.append(f"Object detector found: {found}.")
    if grounding.ocr_text and numbered:
        listing = "\n".join(f"[{n}] {line}" for n, line in enumerate(grounding.ocr_text.splitlines(), start=1))
        parts.append(f"OCR read these lines in the image (cite them by number):\n{listing}")
    elif grounding.ocr_text:
        parts.append(f"OCR read this text in the image:\n{grounding.ocr_text}")
    return "\n\n".join(parts)


def cap_text(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_bytes`` of UTF-8 (never inside a character), and whether it was cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode(errors="ignore"), True


class OpenAIVisionLLM:
    """The same code talks to a local vLLM and to OpenAI; only ``base_url``, ``model`` and key differ.
    It calls exactly what its settings say; finding a backend is ``DiscoveringVisionLLM``'s business."""

    def __init__(self, settings: LLMSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        headers = {"Content-Type": "application/json"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._client: httpx.AsyncClient | None = None
        # Learnt: schemas this backend refused as response_format (they go in the prompt next time), and, after
        # REFUSALS_TO_LEARN different ones, that it refuses response_format for any schema.
        self.refused_schemas: dict[str, None] = {}
        self.refuses_schema = False
        if settings.base_url:
            self._client = httpx.AsyncClient(
                base_url=settings.base_url.rstrip("/") + "/",
                headers=headers,
                timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
                transport=transport,
                trust_env=False,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def analyze(
        self, image_jpeg: bytes, query: str, grounding: Grounding, model: str | None = None,
        schema: ResponseSchema | None = None,
    ) -> LLMAnswer:
        data_uri = "data:image/jpeg;base64," + base64.b64encode(image_jpeg).decode("ascii")
        text = query or (DEFAULT_QUERY if schema is None else DEFAULT_FIELDS_QUERY)
        context = grounding_text(grounding, numbered=schema is not None)
        if context:
            text = f"{text}\n\n{context}"
        if schema is None:
            return await self._chat(self._messages(SYSTEM_PROMPT, text, data_uri), model)
        return await self._structured(text, data_uri, model, schema)

    @staticmethod
    def _messages(system: str, text: str, data_uri: str) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": data_uri}}]},
        ]

    async def _structured(self, text: str, data_uri: str, model: str | None, schema: ResponseSchema) -> LLMAnswer:
        """The schema as the backend's ``response_format`` (json_schema); where the backend refuses that, in the
        prompt. An answer that does not fit gets one repair attempt, then ``LLMInvalidOutputError``."""
        from sight.answers.replies import STRUCTURED_SYSTEM_PROMPT, prompt_for, read_reply, repair_prompt

        response_format: dict[str, Any] | None = {"type": "json_schema", "json_schema": {
            "name": "sight_fields", "schema": schema.reply, "strict": False}}
        messages = self._messages(STRUCTURED_SYSTEM_PROMPT, text, data_uri)
        key = repr(schema.raw)
        answer: LLMAnswer | None = None
        if not self.refuses_schema and key not in self.refused_schemas:
            try:
                answer = await self._chat(messages, model, response_format)
            except _SchemaRefused:
                log.warning("the vision LLM at %s refused response_format; the schema goes in the prompt",
                            self.settings.base_url)
        if answer is None:
            response_format = None
            messages = self._messages(STRUCTURED_SYSTEM_PROMPT, f"{text}\n\n{prompt_for(schema)}", data_uri)
            answer = await self._chat(messages, model)
            self._learn_refusal(key)  # the prompt worked where response_format was refused
        mode = "prompt" if response_format is None else "schema"
        reply = read_reply(answer.answer, schema)
        if reply.problem is not None:
            log.warning("the vision LLM's answer does not fit the schema (%s); asking once more", reply.problem)
            messages = [*messages, {"role": "assistant", "content": answer.answer},
                        {"role": "user", "content": repair_prompt(reply.problem)}]
            first = answer
            try:
                answer = await self._chat(messages, model, response_format)
            except _SchemaRefused:  # the repair itself refused (its longer context, say): the first answer stands
                raise self._invalid(first, mode, f"{reply.problem}; the repair request was refused") from None
            answer = dataclasses.replace(answer, prompt_tokens=first.prompt_tokens + answer.prompt_tokens,
                                         completion_tokens=first.completion_tokens + answer.completion_tokens)
            reply = read_reply(answer.answer, schema)
            if reply.problem is not None:
                raise self._invalid(answer, mode, f"{reply.problem} (after one repair attempt)")
        return dataclasses.replace(answer, structured=mode, reply=reply)

    @staticmethod
    def _invalid(answer: LLMAnswer, mode: str, problem: str) -> LLMInvalidOutputError:
        return LLMInvalidOutputError(f"the vision LLM's answer does not fit the response schema: {problem}",
                                     answer.answer, answer.model, mode, answer.prompt_tokens,
                                     answer.completion_tokens, answer.truncated)

    def _learn_refusal(self, key: str) -> None:
        self.refused_schemas[key] = None
        while len(self.refused_schemas) > REMEMBERED_SCHEMAS:
            del self.refused_schemas[next(iter(self.refused_schemas))]
        if len(self.refused_schemas) >= REFUSALS_TO_LEARN and not self.refuses_schema:
            log.warning("the vision LLM at %s refused response_format for %d schemas: schemas go in the prompt",
                        self.settings.base_url, len(self.refused_schemas))
            self.refuses_schema = True

    async def condense(self, query: str, answers: list[tuple[str, str]], model: str | None = None) -> LLMAnswer:
        listing = "\n".join(f"- {name}: {answer}" for name, answer in answers)
        messages = [
            {"role": "system", "content": CONDENSE_PROMPT},
            {"role": "user", "content": f"Question: {query}\n\nAnswers per image:\n{listing}"},
        ]
        return await self._chat(messages, model)

    async def _chat(self, messages: list[dict[str, Any]], model: str | None,
                    response_format: dict[str, Any] | None = None) -> LLMAnswer:
        if self._client is None:
            raise LLMUnavailableError(f"no vision LLM: {SETUP_HINT}")
        model = model or self.settings.model
        if not model:
            raise LLMUnavailableError(f"no vision LLM model: set SIGHT_LLM__MODEL (the backend at "
                                      f"{self.settings.base_url} needs a model name)")
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
        }
        if response_format is not None:
            body["response_format"] = response_format
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._post(body)
            except httpx.TimeoutException as exc:
                if last:
                    raise StageTimeoutError(f"vision LLM did not answer within {self.settings.timeout}s") from exc
                await anyio.sleep(self._backoff(attempt, None))
                continue
            except httpx.TransportError as exc:
                if last:
                    raise LLMUnavailableError(f"vision LLM unreachable: {type(exc).__name__}") from exc
                await anyio.sleep(self._backoff(attempt, None))
                continue
            if response.status_code in RETRYABLE_STATUS and not last:
                log.warning("vision LLM answered %s; retrying", response.status_code)
                await anyio.sleep(self._backoff(attempt, response.headers.get("retry-after")))
                continue
            if response_format is not None and response.status_code in REFUSED_STATUS:
                raise _SchemaRefused
            return self._parse(response, model, self.settings.max_tokens * BYTES_PER_TOKEN)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        """POST a chat completion and read its answer, at most ``MAX_RESPONSE_BYTES`` of it."""
        assert self._client is not None
        async with self._client.stream("POST", "chat/completions", json=body) as response:
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_RESPONSE_BYTES:
                    raise LLMError(f"the vision LLM sent more than {MAX_RESPONSE_BYTES} bytes; it ignores "
                                   "max_tokens (SIGHT_LLM__MAX_TOKENS)")
        return httpx.Response(response.status_code, headers=response.headers, content=bytes(data))

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), MAX_RETRY_AFTER)
            except ValueError:
                pass
        return float(self.settings.backoff * (2**attempt))

    @staticmethod
    def _parse(response: httpx.Response, model: str, max_answer_bytes: int) -> LLMAnswer:
        if response.status_code != 200:
            raise LLMError(f"vision LLM answered HTTP {response.status_code}")
        try:
            payload = response.json()
            first = payload["choices"][0]
            content = first["message"]["content"]
            if isinstance(content, list):  # some servers return content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise TypeError("content is not text")
            usage = payload.get("usage") or {}
            answer, cut = cap_text(content.strip(), max_answer_bytes)
            return LLMAnswer(
                answer=answer,
                model=str(payload.get("model") or model),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                truncated=cut or first.get("finish_reason") == "length",
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LLMError("vision LLM returned a malformed chat completion") from exc
