"""A small built-in English corpus to train byte-level BPE tokenizers offline.

Tiny test models and architecture presets need a tokenizer that behaves like a real one
(common words become single tokens, any text round-trips) without downloading anything.
The text below is original, plain and varied: prose, questions and answers, numbers, code.
"""

from __future__ import annotations

ENGLISH_CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog was not amused, but it did not move.
Hello! How are you today? I am fine, thank you. What is your name? My name is Sam.
What is the capital of France? The capital of France is Paris. Paris is a large city.
What is the capital of Germany? The capital of Germany is Berlin.
What is the capital of Italy? The capital of Italy is Rome. Rome is a very old city.
What is the capital of Japan? The capital of Japan is Tokyo.
Once upon a time there was a little girl who lived in a small house near the forest.
Every morning she walked to the river to get water for her mother and her brother.
One day she saw a bird with blue wings sitting on a branch above the water.
The weather is nice today. It is warm and sunny, and there are only a few clouds in the sky.
Tomorrow it will rain in the morning, and in the evening it will be cold and windy.
Please write a short story about a cat who wants to learn how to fly.
Can you help me with my homework? Of course, I would be happy to help you.
Explain how a computer works in simple words. A computer reads instructions and data
from memory, does arithmetic and logic on them, and writes the results back to memory.
A language model predicts the next word in a sentence from the words that came before it.
The server receives a request, runs the model, and streams the answer back to the client.
There are seven days in a week, twelve months in a year, and about 365 days in a year.
One, two, three, four, five, six, seven, eight, nine, ten. 1 2 3 4 5 6 7 8 9 10 100 1000.
The sum of 2 and 3 is 5. The product of 4 and 5 is 20. Ten minus seven is three.
Water boils at 100 degrees Celsius and freezes at 0 degrees Celsius at sea level.
The sun rises in the east and sets in the west. The moon goes around the earth.
People like to read books, listen to music, watch movies and play games with friends.
She said that she would come back later, after the meeting with her team had finished.
They were going to the market to buy bread, milk, eggs, apples, rice and some fresh fish.
We should always check our work twice before we send it to someone else.
He thinks that the best way to learn something new is to practice a little every day.
This is a test. This is only a test. If this were a real answer, it would be longer.
Good morning, good afternoon, good evening and good night. See you soon!
Yes, no, maybe. I do not know. I think so. I am not sure. That is a good question.
def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, 1))

import json
data = {"name": "minisgl", "version": 1, "tags": ["fast", "small"]}
print(json.dumps(data))
The user asked a question and the assistant gave a helpful, honest and short answer.
The system prompt tells the assistant who it is and how it should behave in the chat.
Hello world. The world is big, and people all over the world speak many languages.
A small program that prints hello world is often the first program people write.
Thank you very much for your help. You are welcome, and have a great day!
"""
