"""A point-of-sale-like SQLite database of a given size, the same bytes for the same seed.

Products, customers, sales and their items, with every sale's total the sum of its items. The
sample shop (`capsule demo create`), the benchmarks and the tests all make their databases here.
Standard library only.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from capsule.adapters.sampleshop.vocabulary import (
    ADJECTIVES,
    BRANDS,
    CATEGORIES,
    CITIES,
    DESCRIPTION_TEMPLATES,
    EMAIL_DOMAINS,
    FIRST_NAMES,
    ITEM_COUNTS,
    LAST_NAMES,
    MATERIALS,
    NOTE_EXTRAS,
    NOUNS,
    PAYMENT_METHODS,
    PAYMENT_WEIGHTS,
    QUANTITIES,
    STREET_KINDS,
    STREETS,
    WEEKDAYS,
)

PAGE_SIZE = 4096
JOURNAL_MODES = ("wal", "delete")

SCHEMA = """
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    stock INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    phone TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE sales (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER REFERENCES customers(id),
    created_at TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    payment_method TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE sale_items (
    id INTEGER PRIMARY KEY,
    sale_id INTEGER NOT NULL REFERENCES sales(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL,
    line_total_cents INTEGER NOT NULL
);
CREATE INDEX sales_created_at ON sales(created_at);
CREATE INDEX sales_customer_id ON sales(customer_id);
CREATE INDEX sale_items_sale_id ON sale_items(sale_id);
CREATE INDEX sale_items_product_id ON sale_items(product_id);
"""

# Generated data spans three years ending at a fixed instant, so a seed fully determines bytes.
HISTORY_START = 1_640_995_200  # 2022-01-01T00:00:00Z
HISTORY_SECONDS = 3 * 365 * 86_400
# Rough bytes one sale costs in the file (row, items, four index entries), to size batches.
BYTES_PER_SALE_ESTIMATE = 330


# --- timestamps ---------------------------------------------------------------------------------


class Clock:
    """Formats increasing timestamps cheaply: strftime once per day, arithmetic otherwise."""

    def __init__(self) -> None:
        self._day = -1
        self._prefix = ""

    def format(self, unix_seconds: float) -> str:
        whole = int(unix_seconds)
        day, seconds = divmod(whole, 86_400)
        if day != self._day:
            self._day = day
            self._prefix = time.strftime("%Y-%m-%d ", time.gmtime(day * 86_400))
        hours, rest = divmod(seconds, 3600)
        return f"{self._prefix}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


# --- row builders -------------------------------------------------------------------------------


def _phone(rng: random.Random) -> str:
    return f"+1-{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"


def _address(rng: random.Random) -> str:
    city, state = rng.choice(CITIES)
    unit = f", Apt {rng.randint(1, 40)}" if rng.random() < 0.3 else ""
    return (
        f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}{unit}, "
        f"{city}, {state} {rng.randint(10000, 99999)}"
    )


def _description(rng: random.Random) -> str:
    sentences = rng.sample(DESCRIPTION_TEMPLATES, rng.randint(2, 4))
    return " ".join(
        s.format(
            adj=rng.choice(ADJECTIVES),
            adj2=rng.choice(ADJECTIVES),
            noun=rng.choice(NOUNS),
            noun2=rng.choice(NOUNS),
            brand=rng.choice(BRANDS),
            material=rng.choice(MATERIALS),
            years=rng.randint(1, 5),
            category=rng.choice(CATEGORIES),
            weekday=rng.choice(WEEKDAYS),
            w=rng.randint(2, 60),
            h=rng.randint(2, 60),
            d=rng.randint(1, 40),
            grams=rng.randint(20, 5000),
        )
        for s in sentences
    )


def _price(rng: random.Random) -> int:
    # Log-uniform between $0.99 and $499: many cheap items, few expensive ones.
    return int(99 * (500 ** rng.random()))


def _product_rows(rng: random.Random, count: int, clock: Clock) -> Iterator[tuple[Any, ...]]:
    for pid in range(1, count + 1):
        name = f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        updated = clock.format(HISTORY_START + rng.random() * HISTORY_SECONDS)
        yield (
            pid,
            f"{rng.choice(CATEGORIES)}-{pid:06d}",
            name,
            _description(rng),
            _price(rng),
            rng.randint(0, 500),
            updated,
        )


def _customer_rows(rng: random.Random, count: int, clock: Clock) -> Iterator[tuple[Any, ...]]:
    for cid in range(1, count + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        # The id in the email keeps the UNIQUE constraint satisfied without retries.
        email = f"{first}.{last}.{cid}@{rng.choice(EMAIL_DOMAINS)}".lower()
        created = clock.format(HISTORY_START + rng.random() * HISTORY_SECONDS)
        yield (cid, f"{first} {last}", email, _phone(rng), _address(rng), created)


def sale_note(rng: random.Random, sale_id: int) -> str:
    # Always non-empty: mutate_pages rewrites notes in place and needs bytes to change.
    # Indexing with random() instead of choice()/randint(): this runs once per sale.
    rand = rng.random
    extra = NOTE_EXTRAS[int(rand() * len(NOTE_EXTRAS))]
    cashier = FIRST_NAMES[int(rand() * len(FIRST_NAMES))]
    register = int(rand() * 6) + 1
    if extra:
        return f"R{register}-{sale_id:09d} cashier {cashier}; {extra}"
    return f"R{register}-{sale_id:09d} cashier {cashier}"


_Batch = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]  # (sales rows, sale_items rows)


@dataclass
class Catalog:
    """What a sale needs to know about the reference tables."""

    prices: list[int]  # index = product id (index 0 unused)
    customers: int


@dataclass
class _SaleFactory:
    rng: random.Random
    catalog: Catalog
    next_id: int = 1
    start: float = HISTORY_START
    step: float = 60.0
    clock: Clock = field(default_factory=Clock)

    def batch(self, count: int) -> _Batch:
        """Build ``count`` sales and their items, each sale's total being its items' sum."""
        rng, rand = self.rng, self.rng.random
        prices, products = self.catalog.prices, len(self.catalog.prices) - 1
        customers = self.catalog.customers
        methods = rng.choices(PAYMENT_METHODS, PAYMENT_WEIGHTS, k=count)
        sales: list[tuple[Any, ...]] = []
        items: list[tuple[Any, ...]] = []
        for n in range(count):
            sale_id = self.next_id + n
            total = 0
            for _ in range(ITEM_COUNTS[int(rand() * len(ITEM_COUNTS))]):
                product = int(rand() * products) + 1
                unit = prices[product]
                if rand() < 0.05:  # occasional discount, so unit prices are not a pure lookup
                    unit = unit * 9 // 10
                quantity = QUANTITIES[int(rand() * len(QUANTITIES))]
                total += unit * quantity
                items.append((sale_id, product, quantity, unit, unit * quantity))
            customer = int(rand() * customers) + 1 if rand() < 0.7 else None
            self.start += self.step * (0.5 + rand())
            sales.append(
                (sale_id, customer, self.clock.format(self.start), total, methods[n], sale_note(rng, sale_id))
            )
        self.next_id += count
        return sales, items


# --- generate -----------------------------------------------------------------------------------


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")


def _file_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(size)


def _reference_counts(size_bytes: int) -> tuple[int, int]:
    """Products and customers scale with the database but stay a small share of it."""
    products = min(50_000, max(200, size_bytes // 20_000))
    customers = min(500_000, max(500, size_bytes // 5_000))
    return products, customers


def generate(
    path: str | os.PathLike[str],
    size_bytes: int,
    *,
    journal_mode: str = "wal",
    seed: int = 0,
    page_size: int = PAGE_SIZE,
) -> None:
    """Create (replacing any existing file) a POS database of about ``size_bytes``."""
    if journal_mode not in JOURNAL_MODES:
        raise ValueError(f"journal_mode must be one of {JOURNAL_MODES}, not {journal_mode!r}")
    target = Path(path)
    _remove_database(target)
    rng = random.Random(seed)
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        _configure_for_bulk_load(conn, page_size, size_bytes)
        conn.executescript(SCHEMA)
        catalog = _load_reference_tables(conn, rng, size_bytes)
        _load_sales(conn, rng, catalog, size_bytes)
        # Bulk-load settings must not leak into the file's life as a normal database.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_mode={journal_mode.upper()}")
    finally:
        conn.close()


def _configure_for_bulk_load(conn: sqlite3.Connection, page_size: int, size_bytes: int) -> None:
    conn.execute(f"PRAGMA page_size={int(page_size)}")
    # No journal and no fsync: a crash mid-generation just means generating again.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    # Keep the random-order product_id index in memory; it is what slows large loads.
    cache_kib = min(1 << 20, max(16 << 10, size_bytes // 2 >> 10))
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")


def _load_reference_tables(conn: sqlite3.Connection, rng: random.Random, size_bytes: int) -> Catalog:
    products, customers = _reference_counts(size_bytes)
    clock = Clock()
    product_rows = list(_product_rows(rng, products, clock))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?)", product_rows)
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", _customer_rows(rng, customers, clock))
    conn.execute("COMMIT")
    return Catalog(prices=[0, *(row[4] for row in product_rows)], customers=customers)


def _load_sales(conn: sqlite3.Connection, rng: random.Random, catalog: Catalog, size_bytes: int) -> None:
    expected_sales = max(1, size_bytes // BYTES_PER_SALE_ESTIMATE)
    factory = _SaleFactory(rng, catalog, step=HISTORY_SECONDS / expected_sales)
    with _BatchBuilder(factory) as builder:
        builder.request(_batch_size(size_bytes, 0))
        conn.execute("BEGIN")
        while (current := _file_bytes(conn)) < size_bytes:
            sales, items = builder.receive()
            # Ask for the next batch before storing this one, so both proceed at once.
            builder.request(_batch_size(size_bytes, current + len(sales) * BYTES_PER_SALE_ESTIMATE))
            conn.executemany("INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?)", sales)
            conn.executemany(
                "INSERT INTO sale_items (sale_id, product_id, quantity, unit_price_cents, "
                "line_total_cents) VALUES (?, ?, ?, ?, ?)",
                items,
            )
        conn.execute("COMMIT")


def _build_batches(channel: Connection, factory: _SaleFactory, parent_end: Connection) -> None:
    """Child process: answer each requested batch size with a batch, until None or the parent is gone.

    The child closes its copy of the parent's end first: otherwise a parent killed outright would
    leave the child waiting for a request forever, since its own copy kept the pipe open.
    """
    parent_end.close()
    with contextlib.suppress(EOFError, OSError):
        while (count := channel.recv()) is not None:
            channel.send(factory.batch(count))


class _BatchBuilder:
    """Builds sale batches in a child process, one batch ahead of the caller.

    Building rows is pure Python and about half the work; a thread would fight the
    inserting thread for the GIL, a process runs truly in parallel. Batch sizes are decided
    by the caller at fixed points, so the output stays determined by the seed.
    """

    def __init__(self, factory: _SaleFactory) -> None:
        self._channel, self._child_end = multiprocessing.Pipe()
        self._process = multiprocessing.Process(
            target=_build_batches, args=(self._child_end, factory, self._channel), daemon=True
        )
        self._in_flight = 0

    def __enter__(self) -> _BatchBuilder:
        self._process.start()
        self._child_end.close()  # the child has its own copy: if it dies, receive() sees the end
        return self

    def request(self, count: int) -> None:
        self._channel.send(count)
        self._in_flight += 1

    def receive(self) -> _Batch:
        try:
            batch: _Batch = self._channel.recv()
        except EOFError as e:
            raise ChildProcessError("the process that builds the sample's sales stopped") from e
        self._in_flight -= 1
        return batch

    def __exit__(self, *_exc: object) -> None:
        try:
            with contextlib.suppress(OSError):  # a child that is gone has nothing left to take
                while self._in_flight:  # the child blocks in send() until its batch is taken
                    self.receive()
                self._channel.send(None)
            self._process.join(timeout=10)
        finally:
            if self._process.is_alive():
                self._process.kill()
            self._channel.close()


def _batch_size(size_bytes: int, current_bytes: int) -> int:
    # Shrinking batches near the end keeps the overshoot small for small databases.
    remaining_sales = max(0, size_bytes - current_bytes) // BYTES_PER_SALE_ESTIMATE
    return min(20_000, max(50, remaining_sales // 2))
