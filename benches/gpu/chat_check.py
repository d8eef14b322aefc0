#!/usr/bin/env python3
"""Chats with a model through a running head's OpenAI API: one question whose answer is
checked, then N concurrent chats; prints the answer and the aggregate completion tokens/s.

Usage: chat_check.py BASE_URL MODEL [--concurrent 32] [--max-tokens 128]
"""
import argparse
import concurrent.futures
import json
import time

import httpx


def chat(client, base, model, content, max_tokens):
    r = client.post(f"{base}/v1/chat/completions", json={
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }, timeout=300)
    r.raise_for_status()
    body = r.json()
    return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("model")
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    with httpx.Client() as client:
        answer, _ = chat(client, a.base, a.model, "What is the capital of France?", 32)
        print(json.dumps({"answer": answer, "paris": "Paris" in answer}), flush=True)
        topics = ["the sea", "a city", "a forest", "the moon", "rain", "a train", "music", "bread"]
        prompts = [f"Write a short story about {topics[i % len(topics)]} ({i})." for i in range(a.concurrent)]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(a.concurrent) as pool:
            results = list(pool.map(lambda p: chat(client, a.base, a.model, p, a.max_tokens), prompts))
        elapsed = time.perf_counter() - started
        tokens = sum(n for _, n in results)
        print(json.dumps({"concurrent": a.concurrent, "completion_tokens": tokens,
                          "seconds": elapsed, "tokens_per_s": tokens / elapsed}), flush=True)


if __name__ == "__main__":
    main()
