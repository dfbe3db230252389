"""The built-in text-to-SQL task: questions about a small bookshop database, generated from templates.

The default demo must run on a fresh machine with no outside data: "teach a small instruct model text-to-SQL
and check what else it forgets". Everything here is generated, deterministically, from code:

* a bookshop schema of six tables with foreign keys (authors, books, customers, orders, order_items,
  reviews) and a populated SQLite file of it (fixed content, independent of the question seed);
* question templates with their gold SQL (selections, filters, COUNT/SUM/AVG/MIN/MAX, GROUP BY, HAVING,
  ORDER BY ... LIMIT, joins over two and three tables), filled with values from slot lists;
* a train split and a test split in the sql-create-context form (``question``, ``context`` = the CREATE TABLE
  statements of the tables the query needs, ``answer`` = gold SQL), plus ``db_id``. The test split measures
  generalisation: its rows come from templates never used for training (:data:`HELD_OUT_TEMPLATES`) or
  use slot values never used for training (the ``held_out`` list of each slot).

Every generated gold query runs on the shipped database; combinations whose result is empty, all NULL or a
zero count, and ORDER BY ... LIMIT queries with a tie at the cut, are not used.

``write_text2sql(dir)`` writes the files; ``builtin_text2sql_dir()`` returns a cached copy under
``${TUNELAB_CACHE:-~/.cache/tunelab}/data/text2sql-v1``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import random
import shutil
import sqlite3
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_jsonl, atomic_write_text, make_shared

VERSION = "text2sql-v1"
DB_ID = "bookshop"
DB_FILENAME = "bookshop.sqlite"
_DB_SEED = "tunelab-bookshop-v1"  # the database content never changes with the question seed

# ---------------------------------------------------------------------------------------------------- schema

# Full definitions, for the shipped database.
SCHEMA: dict[str, str] = {
    "authors": "CREATE TABLE authors (author_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, country VARCHAR, "
               "birth_year INTEGER)",
    "books": "CREATE TABLE books (book_id INTEGER PRIMARY KEY, title VARCHAR NOT NULL, "
             "author_id INTEGER REFERENCES authors (author_id), genre VARCHAR, price REAL, "
             "publication_year INTEGER, pages INTEGER)",
    "customers": "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, country VARCHAR, "
                 "city VARCHAR, signup_date DATE)",
    "orders": "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers (customer_id), "
              "order_date DATE, status VARCHAR)",
    "order_items": "CREATE TABLE order_items (order_id INTEGER REFERENCES orders (order_id), "
                   "book_id INTEGER REFERENCES books (book_id), quantity INTEGER, unit_price REAL, "
                   "PRIMARY KEY (order_id, book_id))",
    "reviews": "CREATE TABLE reviews (review_id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES books (book_id), "
               "customer_id INTEGER REFERENCES customers (customer_id), rating INTEGER, review_date DATE)",
}

# Compact definitions (columns and types only), for the prompt context, as in sql-create-context.
CONTEXT_SCHEMA: dict[str, str] = {
    "authors": "CREATE TABLE authors (author_id INTEGER, name VARCHAR, country VARCHAR, birth_year INTEGER)",
    "books": "CREATE TABLE books (book_id INTEGER, title VARCHAR, author_id INTEGER, genre VARCHAR, price REAL, "
             "publication_year INTEGER, pages INTEGER)",
    "customers": "CREATE TABLE customers (customer_id INTEGER, name VARCHAR, country VARCHAR, city VARCHAR, "
                 "signup_date DATE)",
    "orders": "CREATE TABLE orders (order_id INTEGER, customer_id INTEGER, order_date DATE, status VARCHAR)",
    "order_items": "CREATE TABLE order_items (order_id INTEGER, book_id INTEGER, quantity INTEGER, unit_price REAL)",
    "reviews": "CREATE TABLE reviews (review_id INTEGER, book_id INTEGER, customer_id INTEGER, rating INTEGER, "
               "review_date DATE)",
}

CITIES: dict[str, tuple[str, str]] = {
    "Argentina": ("Buenos Aires", "Cordoba"), "Australia": ("Sydney", "Melbourne"), "Brazil": ("Sao Paulo", "Recife"),
    "Canada": ("Toronto", "Vancouver"), "Egypt": ("Cairo", "Alexandria"), "France": ("Paris", "Lyon"),
    "Germany": ("Berlin", "Munich"), "India": ("Mumbai", "Pune"), "Ireland": ("Dublin", "Cork"),
    "Italy": ("Rome", "Milan"), "Japan": ("Tokyo", "Osaka"), "Kenya": ("Nairobi", "Mombasa"),
    "Mexico": ("Monterrey", "Guadalajara"), "Nigeria": ("Lagos", "Abuja"), "Norway": ("Oslo", "Bergen"),
    "Spain": ("Madrid", "Seville"),
}
COUNTRIES = tuple(CITIES)
GENRE_BASE_PRICE = {
    "fantasy": 19.0, "mystery": 15.0, "romance": 12.0, "science fiction": 21.0, "history": 29.0,
    "biography": 25.0, "poetry": 14.0, "horror": 16.0, "travel": 27.0, "cookery": 32.0,
}
GENRES = tuple(GENRE_BASE_PRICE)
STATUSES = ("delivered", "shipped", "pending", "cancelled", "returned")

_FIRST = ("Amara", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemi",
          "Lars", "Maya", "Nikolai", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Victor", "Wren",
          "Ximena", "Yusuf", "Zofia", "Aiden", "Beatriz", "Chen", "Dalia", "Emil", "Fatima")
_LAST = ("Abara", "Becker", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
         "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quintero", "Rossi", "Schmidt",
         "Tanaka", "Umeh", "Varga", "Weber", "Xu", "Yilmaz", "Zanetti")
_ADJ = ("Silent", "Golden", "Hidden", "Broken", "Distant", "Crimson", "Frozen", "Last", "Secret", "Quiet",
        "Burning", "Endless", "Wandering", "Lost", "Bright", "Hollow", "Midnight", "Paper", "Iron", "Salt")
_NOUN = ("River", "Garden", "Harbor", "Kingdom", "Letter", "Mountain", "Lantern", "Orchard", "Island", "Bridge",
         "Forest", "Clock", "Mirror", "Voyage", "Compass", "Library", "Tide", "Window", "Map", "Feast")

N_AUTHORS, N_BOOKS, N_CUSTOMERS, N_ORDERS, N_REVIEWS = 30, 160, 64, 320, 260


def _date(rng: random.Random, first_year: int, last_year: int) -> str:
    start = _dt.date(first_year, 1, 1).toordinal()
    end = _dt.date(last_year, 12, 31).toordinal()
    return _dt.date.fromordinal(rng.randint(start, end)).isoformat()


def _names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    combos = [f"{f} {l}" for f in _FIRST for l in _LAST if f"{f} {l}" not in taken]
    names = rng.sample(combos, n)
    taken.update(names)
    return names


def bookshop_rows() -> dict[str, list[tuple]]:
    """The rows of the shipped database, per table (deterministic; no randomness outside this function)."""
    rng = random.Random(_DB_SEED)
    taken: set[str] = set()

    authors = []
    for i, name in enumerate(_names(rng, N_AUTHORS, taken)):
        country = COUNTRIES[i] if i < len(COUNTRIES) else rng.choice(COUNTRIES)  # every country has an author
        authors.append((i + 1, name, country, rng.randint(1940, 1995)))

    titles = [f"The {a} {n}" for a in _ADJ for n in _NOUN] + [f"{n} of the {a} {m}" for n in _NOUN for a in _ADJ
                                                             for m in ("Sea", "North", "Stars", "City")]
    titles = rng.sample(titles, N_BOOKS)
    author_weight = [rng.choice((1, 1, 2, 3, 5)) for _ in authors]
    years = list(range(1985, 2025))
    prices: set[float] = set()
    pages: set[int] = set()
    books = []
    for i in range(N_BOOKS):
        author_id = i + 1 if i < N_AUTHORS else rng.choices(range(1, N_AUTHORS + 1), author_weight)[0]
        genre = GENRES[i % len(GENRES)] if i < 3 * len(GENRES) else rng.choice(GENRES)
        year = years[i] if i < len(years) else rng.choice(years)  # every year has a book
        price = round(GENRE_BASE_PRICE[genre] + rng.uniform(-7.0, 7.0), 2)
        while price in prices:  # unique prices: ORDER BY price has no ties
            price = round(price + 0.01, 2)
        prices.add(price)
        n_pages = rng.randint(90, 900)
        while n_pages in pages:
            n_pages += 1
        pages.add(n_pages)
        books.append((i + 1, titles[i], author_id, genre, price, year, n_pages))

    customers = []
    cities = [(country, city) for country, pair in CITIES.items() for city in pair]
    signup_days = rng.sample(range(_dt.date(2018, 1, 1).toordinal(), _dt.date(2023, 12, 31).toordinal()), N_CUSTOMERS)
    for i, name in enumerate(_names(rng, N_CUSTOMERS, taken)):
        country, city = cities[i % len(cities)]  # every city has two customers
        customers.append((i + 1, name, country, city, _dt.date.fromordinal(signup_days[i]).isoformat()))

    customer_weight = [rng.choice((1, 1, 2, 3, 4)) for _ in customers]
    orders = []
    for i in range(N_ORDERS):
        customer_id = rng.choices(range(1, N_CUSTOMERS + 1), customer_weight)[0]
        status = rng.choices(STATUSES, (55, 15, 10, 10, 10))[0]
        orders.append((i + 1, customer_id, _date(rng, 2019 + i % 6, 2019 + i % 6), status))

    book_weight = [rng.choice((1, 2, 3, 6)) for _ in books]
    order_items = []
    for order_id, *_ in orders:
        chosen: set[int] = set()
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            book_id = rng.choices(range(1, N_BOOKS + 1), book_weight)[0]
            if book_id in chosen:
                continue
            chosen.add(book_id)
            order_items.append((order_id, book_id, rng.choices((1, 2, 3, 4), (60, 25, 10, 5))[0], books[book_id - 1][4]))

    reviews = []
    pairs: set[tuple[int, int]] = set()
    while len(reviews) < N_REVIEWS:
        book_id = rng.choices(range(1, N_BOOKS + 1), book_weight)[0]
        customer_id = rng.randint(1, N_CUSTOMERS)
        if (book_id, customer_id) in pairs:
            continue
        pairs.add((book_id, customer_id))
        rating = rng.choices((1, 2, 3, 4, 5), (5, 10, 25, 35, 25))[0]
        reviews.append((len(reviews) + 1, book_id, customer_id, rating, _date(rng, 2019, 2024)))

    return {"authors": authors, "books": books, "customers": customers, "orders": orders,
            "order_items": order_items, "reviews": reviews}


def build_bookshop(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Create and fill the bookshop tables in ``conn``."""
    for table, ddl in SCHEMA.items():
        conn.execute(ddl)
    for table, rows in bookshop_rows().items():
        if rows:
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' for _ in rows[0])})", rows)
    conn.commit()
    return conn


# ------------------------------------------------------------------------------------------------- templates

@dataclass(frozen=True)
class Template:
    id: str
    questions: tuple[str, ...]  # paraphrases, with {slot} fillers
    sql: str  # gold SQL with {slot} fillers
    tables: tuple[str, ...]  # tables the query needs (for the context)
    tie_column: Optional[int] = None  # for ORDER BY <aggregate> LIMIT: projection column that must not tie at the cut

    @property
    def slots(self) -> tuple[str, ...]:
        names = []
        for text in (self.sql,) + self.questions:
            for _, name, _, _ in string.Formatter().parse(text):
                if name and name not in names:
                    names.append(name)
        return tuple(names)


_T = Template
TEMPLATES: tuple[Template, ...] = (
    # single table: selections and filters
    _T("genre_titles", ("List the titles of all {genre} books.", "Which books are in the {genre} genre?",
                        "Show me every {genre} title in the shop."),
       "SELECT title FROM books WHERE genre = '{genre}'", ("books",)),
    _T("authors_from_country", ("Which authors come from {country}?", "List the names of the authors from {country}.",
                                "Give me the authors whose country is {country}."),
       "SELECT name FROM authors WHERE country = '{country}'", ("authors",)),
    _T("books_after_year", ("List the title and publication year of books published after {year}.",
                            "Which books came out after {year}? Show their titles and years."),
       "SELECT title, publication_year FROM books WHERE publication_year > {year}", ("books",)),
    _T("books_cheaper_than", ("Show the title and price of every book that costs less than ${price}.",
                              "Which books are cheaper than {price} dollars? Give the title and price."),
       "SELECT title, price FROM books WHERE price < {price}", ("books",)),
    _T("customers_in_city", ("Which customers live in {city}?", "List the names of customers based in {city}."),
       "SELECT name FROM customers WHERE city = '{city}'", ("customers",)),
    _T("authors_born_before", ("Which authors were born before {birth_year}? Give their names and birth years.",
                               "List the name and birth year of authors born earlier than {birth_year}."),
       "SELECT name, birth_year FROM authors WHERE birth_year < {birth_year}", ("authors",)),
    # single table: aggregates
    _T("count_genre", ("How many {genre} books are there?", "Count the books in the {genre} genre.",
                       "What is the number of {genre} titles?"),
       "SELECT COUNT(*) FROM books WHERE genre = '{genre}'", ("books",)),
    _T("avg_price_genre", ("What is the average price of {genre} books?",
                           "On average, how much does a {genre} book cost?"),
       "SELECT AVG(price) FROM books WHERE genre = '{genre}'", ("books",)),
    _T("max_pages_before", ("What is the largest page count among books published before {year}?",
                            "How many pages does the longest book published before {year} have?"),
       "SELECT MAX(pages) FROM books WHERE publication_year < {year}", ("books",)),
    _T("min_price_in_year", ("What is the lowest price of a book published in {year}?",
                             "How much does the cheapest book from {year} cost?"),
       "SELECT MIN(price) FROM books WHERE publication_year = {year}", ("books",)),
    _T("count_status", ("How many orders are {status}?", "Count the {status} orders.",
                        "What is the number of orders with status {status}?"),
       "SELECT COUNT(*) FROM orders WHERE status = '{status}'", ("orders",)),
    _T("orders_in_year", ("How many orders were placed in {order_year}?", "Count the orders from {order_year}."),
       "SELECT COUNT(*) FROM orders WHERE strftime('%Y', order_date) = '{order_year}'", ("orders",)),
    _T("count_customers_country", ("How many customers are from {country}?",
                                   "What is the number of customers in {country}?"),
       "SELECT COUNT(*) FROM customers WHERE country = '{country}'", ("customers",)),
    # GROUP BY
    _T("books_per_genre", ("How many books are there in each genre?", "Show each genre with its number of books."),
       "SELECT genre, COUNT(*) FROM books GROUP BY genre", ("books",)),
    _T("avg_price_per_genre", ("What is the average book price for each genre?",
                               "For every genre, give the mean price of its books."),
       "SELECT genre, AVG(price) FROM books GROUP BY genre", ("books",)),
    _T("authors_per_country", ("How many authors come from each country?",
                               "List every country with the number of authors from it."),
       "SELECT country, COUNT(*) FROM authors GROUP BY country", ("authors",)),
    _T("orders_per_status", ("How many orders are there for each status?", "Break down the number of orders by status."),
       "SELECT status, COUNT(*) FROM orders GROUP BY status", ("orders",)),
    _T("customers_per_city", ("For customers in {country}, how many live in each city?",
                              "Count the customers from {country} per city."),
       "SELECT city, COUNT(*) FROM customers WHERE country = '{country}' GROUP BY city", ("customers",)),
    # ORDER BY ... LIMIT
    _T("most_expensive", ("What are the {n} most expensive books and their prices?",
                          "List the top {n} books by price, with their prices."),
       "SELECT title, price FROM books ORDER BY price DESC LIMIT {n}", ("books",)),
    _T("longest_in_genre", ("Which are the {n} longest {genre} books?", "Name the {n} {genre} books with the most pages."),
       "SELECT title FROM books WHERE genre = '{genre}' ORDER BY pages DESC LIMIT {n}", ("books",)),
    _T("cheapest_since_year", ("List the {n} cheapest books published in {year} or later, with their prices.",
                               "Which {n} books from {year} onwards cost the least? Show title and price."),
       "SELECT title, price FROM books WHERE publication_year >= {year} ORDER BY price ASC LIMIT {n}", ("books",)),
    _T("newest_customers", ("Who are the {n} customers who signed up most recently, and when did they join?",
                            "Show the {n} newest customers with their signup dates."),
       "SELECT name, signup_date FROM customers ORDER BY signup_date DESC LIMIT {n}", ("customers",)),
    # joins over two tables
    _T("books_by_author", ("Which books were written by {author}?", "List the titles of books by {author}."),
       "SELECT books.title FROM books JOIN authors ON books.author_id = authors.author_id "
       "WHERE authors.name = '{author}'", ("authors", "books")),
    _T("books_by_author_country", ("List the titles of books written by authors from {country}.",
                                   "Which books have an author from {country}?"),
       "SELECT books.title FROM books JOIN authors ON books.author_id = authors.author_id "
       "WHERE authors.country = '{country}'", ("authors", "books")),
    _T("author_of_title", ('Who wrote "{title}"?', 'Name the author of "{title}".'),
       "SELECT authors.name FROM authors JOIN books ON authors.author_id = books.author_id "
       "WHERE books.title = '{title}'", ("authors", "books")),
    _T("books_per_author", ("How many books has each author written?",
                            "For each author, give the number of books they wrote."),
       "SELECT authors.name, COUNT(*) FROM authors JOIN books ON authors.author_id = books.author_id "
       "GROUP BY authors.name", ("authors", "books")),
    _T("orders_from_country", ("How many orders were placed by customers from {country}?",
                               "Count the orders made by customers in {country}."),
       "SELECT COUNT(*) FROM orders JOIN customers ON orders.customer_id = customers.customer_id "
       "WHERE customers.country = '{country}'", ("customers", "orders")),
    _T("avg_rating_of_title", ('What is the average rating of "{title}"?', 'How well is "{title}" rated on average?'),
       "SELECT AVG(reviews.rating) FROM reviews JOIN books ON reviews.book_id = books.book_id "
       "WHERE books.title = '{title}'", ("books", "reviews")),
    _T("customers_with_status", ("Which customers have an order that is {status}?",
                                 "List the distinct names of customers with {status} orders."),
       "SELECT DISTINCT customers.name FROM customers JOIN orders ON customers.customer_id = orders.customer_id "
       "WHERE orders.status = '{status}'", ("customers", "orders")),
    _T("copies_sold_genre", ("How many copies of {genre} books have been sold in total?",
                             "What is the total number of {genre} books sold?"),
       "SELECT SUM(order_items.quantity) FROM order_items JOIN books ON order_items.book_id = books.book_id "
       "WHERE books.genre = '{genre}'", ("books", "order_items")),
    _T("avg_rating_per_genre", ("What is the average review rating for each genre?",
                                "For every genre, give the mean rating its books received."),
       "SELECT books.genre, AVG(reviews.rating) FROM reviews JOIN books ON reviews.book_id = books.book_id "
       "GROUP BY books.genre", ("books", "reviews")),
    _T("top_sellers", ("What are the {n} best-selling books, with the number of copies sold?",
                       "List the top {n} books by copies sold, with the totals."),
       "SELECT books.title, SUM(order_items.quantity) FROM books JOIN order_items ON books.book_id = order_items.book_id "
       "GROUP BY books.title ORDER BY SUM(order_items.quantity) DESC LIMIT {n}", ("books", "order_items"), tie_column=1),
    # HAVING
    _T("prolific_authors", ("Which authors have written more than {k_books} books?",
                            "List the authors with over {k_books} books."),
       "SELECT authors.name FROM authors JOIN books ON authors.author_id = books.author_id "
       "GROUP BY authors.name HAVING COUNT(*) > {k_books}", ("authors", "books")),
    _T("pricey_genres", ("Which genres have an average price above ${avg_price}?",
                         "List the genres whose books cost more than {avg_price} dollars on average."),
       "SELECT genre FROM books GROUP BY genre HAVING AVG(price) > {avg_price}", ("books",)),
    _T("loyal_customers", ("Which customers have placed at least {k_orders} orders?",
                           "List the customers with {k_orders} or more orders."),
       "SELECT customers.name FROM customers JOIN orders ON customers.customer_id = orders.customer_id "
       "GROUP BY customers.name HAVING COUNT(*) >= {k_orders}", ("customers", "orders")),
    # joins over three tables
    _T("copies_sold_author", ("How many copies of books by {author} have been sold?",
                              "What is the total quantity sold of books written by {author}?"),
       "SELECT SUM(order_items.quantity) FROM order_items JOIN books ON order_items.book_id = books.book_id "
       "JOIN authors ON books.author_id = authors.author_id WHERE authors.name = '{author}'",
       ("authors", "books", "order_items")),
    _T("revenue_per_genre_in_year", ("What was the revenue per genre in {order_year}?",
                                     "For orders placed in {order_year}, give each genre's total sales revenue."),
       "SELECT books.genre, SUM(order_items.quantity * order_items.unit_price) FROM order_items "
       "JOIN orders ON order_items.order_id = orders.order_id JOIN books ON order_items.book_id = books.book_id "
       "WHERE strftime('%Y', orders.order_date) = '{order_year}' GROUP BY books.genre",
       ("books", "orders", "order_items")),
    _T("high_raters_of_genre", ("Which customers gave a {genre} book a rating of {rating} or higher?",
                                "List the customers who rated a {genre} book at least {rating} stars."),
       "SELECT DISTINCT customers.name FROM reviews JOIN customers ON reviews.customer_id = customers.customer_id "
       "JOIN books ON reviews.book_id = books.book_id WHERE books.genre = '{genre}' AND reviews.rating >= {rating}",
       ("books", "customers", "reviews")),
)

# Templates used only in the test split: their question/SQL structure is never seen in training.
HELD_OUT_TEMPLATES = frozenset({
    "min_price_in_year", "orders_per_status", "newest_customers", "customers_with_status",
    "loyal_customers", "avg_rating_per_genre", "high_raters_of_genre",
})
TEST_SHARE_HELD_OUT_TEMPLATES = 0.4  # the rest of the test split: seen templates with held-out fillers


@dataclass(frozen=True)
class Slot:
    train: tuple
    held_out: tuple  # values used only in the test split


def slot_values() -> dict[str, Slot]:
    """Filler values per slot (names and titles come from the shipped database)."""
    rows = bookshop_rows()
    authors = [r[1] for r in rows["authors"]]
    titles = [r[1] for r in rows["books"]]
    cities = [c for pair in CITIES.values() for c in pair]
    held_cities = ("Cork", "Recife", "Pune", "Bergen", "Osaka", "Seville")
    held_countries = ("Ireland", "Kenya", "Norway")
    return {
        "genre": Slot(tuple(g for g in GENRES if g not in ("poetry", "travel")), ("poetry", "travel")),
        "country": Slot(tuple(c for c in COUNTRIES if c not in held_countries), held_countries),
        "city": Slot(tuple(c for c in cities if c not in held_cities), held_cities),
        "year": Slot((1990, 1993, 1996, 2000, 2003, 2006, 2009, 2012, 2015, 2018, 2020), (1998, 2005, 2014, 2022)),
        "birth_year": Slot((1950, 1955, 1960, 1965, 1970, 1975, 1980, 1985), (1958, 1972)),
        "price": Slot((8, 10, 12, 15, 20, 25), (14, 18)),
        "avg_price": Slot((15, 20, 25, 30), (18, 22)),
        "status": Slot(("pending", "shipped", "delivered", "cancelled"), ("returned",)),
        "order_year": Slot((2019, 2020, 2021, 2023, 2024), (2022,)),
        "n": Slot((3, 5, 10), (4, 7)),
        "k_books": Slot((3, 4, 5, 6), (7,)),
        "k_orders": Slot((3, 4, 5, 6), (7,)),
        "rating": Slot((3, 4), (5,)),
        "author": Slot(tuple(authors[:24]), tuple(authors[24:])),
        "title": Slot(tuple(t for i, t in enumerate(titles) if i % 5), tuple(t for i, t in enumerate(titles) if not i % 5)),
    }


# ------------------------------------------------------------------------------------------------ generation

@dataclass(frozen=True)
class Example:
    question: str
    context: str
    answer: str
    template: str
    fillers: tuple[tuple[str, object], ...] = field(default=())

    def row(self) -> dict:
        """The sql-create-context row written to the JSONL files."""
        return {"question": self.question, "context": self.context, "answer": self.answer, "db_id": DB_ID}


def context_for(tables: tuple[str, ...]) -> str:
    """CREATE TABLE statements of ``tables`` in schema order, joined by '; '."""
    return "; ".join(CONTEXT_SCHEMA[t] for t in CONTEXT_SCHEMA if t in tables)


def informative(rows: list[tuple]) -> bool:
    """A result worth asking for: some rows, not all NULL, not a lone zero count."""
    if not rows or all(v is None for r in rows for v in r):
        return False
    return rows != [(0,)]


def _tie_at_cut(conn: sqlite3.Connection, sql: str, n: int, column: int) -> bool:
    full = conn.execute(sql.rsplit(" LIMIT ", 1)[0]).fetchall()
    return len(full) > n and full[n - 1][column] == full[n][column]


def candidates(conn: sqlite3.Connection, template: Template, slots: dict[str, Slot], split: str) -> list[dict]:
    """Filler combinations for a template in a split, keeping only informative, tie-free gold queries.

    train: training values only. test: any values for held-out templates; otherwise at least one held-out value.
    """
    names = template.slots
    if split == "train":
        pools = [slots[s].train for s in names]
    else:
        pools = [slots[s].train + slots[s].held_out for s in names]
    out = []
    for combo in itertools.product(*pools):
        fillers = dict(zip(names, combo))
        if split == "test" and template.id not in HELD_OUT_TEMPLATES:
            if not any(fillers[s] in slots[s].held_out for s in names):
                continue
        sql = template.sql.format(**fillers)
        rows = conn.execute(sql).fetchall()  # a failure here is a bug in a template
        if not informative(rows):
            continue
        if template.tie_column is not None and _tie_at_cut(conn, sql, int(fillers["n"]), template.tie_column):
            continue
        out.append(fillers)
    return out


def _round_robin(rng: random.Random, pools: dict[str, list[dict]], n: int, what: str) -> list[tuple[str, dict]]:
    """n (template, fillers) picks spread evenly over templates.

    A template with few filler combinations repeats them, once per extra paraphrase, so that small templates
    are not crowded out by ones with many combinations (book titles, author names).
    """
    by_id = {t.id: t for t in TEMPLATES}
    queues = {}
    for t, combos in sorted(pools.items()):
        if combos:
            queues[t] = [c for _ in by_id[t].questions for c in rng.sample(combos, len(combos))]
    picks: list[tuple[str, dict]] = []
    cursors = {t: 0 for t in queues}
    while len(picks) < n:
        open_templates = [t for t in queues if cursors[t] < len(queues[t])]
        if not open_templates:
            raise TunelabError(
                f"built-in text-to-SQL: cannot draw {n} distinct {what} questions (at most {len(picks)}); "
                "ask for fewer rows (n_train / n_test)"
            )
        for t in rng.sample(open_templates, len(open_templates)):
            if len(picks) == n:
                break
            picks.append((t, queues[t][cursors[t]]))
            cursors[t] += 1
    return picks


def generate_text2sql(*, seed: int = 0, n_train: int = 400, n_test: int = 100) -> tuple[list[Example], list[Example]]:
    """The train and test examples (deterministic for a seed)."""
    if n_train < 1 or n_test < 1:
        raise TunelabError(f"built-in text-to-SQL: n_train and n_test must be at least 1, got {n_train} and {n_test}")
    rng = random.Random(seed)
    slots = slot_values()
    by_id = {t.id: t for t in TEMPLATES}
    conn = build_bookshop(sqlite3.connect(":memory:"))
    try:
        train_pools = {t.id: candidates(conn, t, slots, "train") for t in TEMPLATES if t.id not in HELD_OUT_TEMPLATES}
        test_pools = {t.id: candidates(conn, t, slots, "test") for t in TEMPLATES}
    finally:
        conn.close()
    n_test_held = round(n_test * TEST_SHARE_HELD_OUT_TEMPLATES)
    test_picks = (
        _round_robin(rng, {t: c for t, c in test_pools.items() if t in HELD_OUT_TEMPLATES}, n_test_held, "test")
        + _round_robin(rng, {t: c for t, c in test_pools.items() if t not in HELD_OUT_TEMPLATES}, n_test - n_test_held, "test")
    )
    train_picks = _round_robin(rng, train_pools, n_train, "train")

    def make(picks: list[tuple[str, dict]]) -> list[Example]:
        examples, seen = [], set()
        for template_id, fillers in picks:
            t = by_id[template_id]
            phrasings = [q.format(**fillers) for q in t.questions]
            fresh = [q for q in phrasings if q not in seen]  # a reused combination gets another paraphrase
            question = rng.choice(fresh or phrasings)
            seen.add(question)
            examples.append(Example(question, context_for(t.tables), t.sql.format(**fillers), t.id,
                                    tuple(sorted(fillers.items()))))
        return examples

    train = make(train_picks)
    test = make(test_picks)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


# --------------------------------------------------------------------------------------------------- writing

def _readme(n_train: int, n_test: int, seed: int) -> str:
    schema = "\n".join(f"    {ddl};" for ddl in SCHEMA.values())
    held = ", ".join(sorted(HELD_OUT_TEMPLATES))
    slots = slot_values()
    held_values = "; ".join(
        f"{name}: {', '.join(map(str, s.held_out[:6]))}{' …' if len(s.held_out) > 6 else ''}"
        for name, s in slots.items()
    )
    return f"""# tunelab built-in text-to-SQL task ({VERSION})

Questions in English about a small bookshop database, with their SQL, generated by tunelab from templates.
No outside data: everything here comes from `tunelab.builtin.text2sql` (seed {seed}).

Files
- `train.jsonl` ({n_train} rows) and `test.jsonl` ({n_test} rows), in the sql-create-context form:
  `question`, `context` (the CREATE TABLE statements of the tables the query needs, joined by "; "),
  `answer` (the gold SQL, SQLite dialect, upper-case keywords), `db_id` ("{DB_ID}").
- `{DB_FILENAME}`: the populated database ({N_AUTHORS} authors, {N_BOOKS} books, {N_CUSTOMERS} customers,
  {N_ORDERS} orders, their order items and {N_REVIEWS} reviews) for execution accuracy, e.g.
  `execution_accuracy(predictions, golds, db_paths="{DB_FILENAME}")`.

Schema
{schema}

How it was generated
- {len(TEMPLATES)} question templates (selections, filters, COUNT/SUM/AVG/MIN/MAX, GROUP BY, HAVING,
  ORDER BY … LIMIT, joins over two and three tables), each with two or three paraphrases, and slots filled
  from value lists (genres, countries, cities, years, prices, thresholds, author names, book titles).
- Every gold query runs on `{DB_FILENAME}`; filler combinations whose result is empty, all NULL or a zero
  count, and ORDER BY … LIMIT queries with a tie at the cut, are left out.
- The test split measures generalisation. {round(100 * TEST_SHARE_HELD_OUT_TEMPLATES)}% of it comes from templates
  never used in training ({held}); the rest uses training templates with at least one slot value never used
  in training ({held_values}).
- Train and test rows never share a gold query. Re-running with the same seed gives identical files.
"""


def write_text2sql(output_dir: str | os.PathLike, *, seed: int = 0, n_train: int = 400, n_test: int = 100) -> dict[str, Path]:
    """Write train.jsonl, test.jsonl, bookshop.sqlite and README.md into ``output_dir``; return their paths."""
    out = Path(output_dir)
    train, test = generate_text2sql(seed=seed, n_train=n_train, n_test=n_test)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": atomic_write_jsonl(out / "train.jsonl", [e.row() for e in train]),
        "test": atomic_write_jsonl(out / "test.jsonl", [e.row() for e in test]),
        "database": _write_database(out / DB_FILENAME),
        "readme": atomic_write_text(out / "README.md", _readme(n_train, n_test, seed)),
    }
    return paths


def _write_database(path: Path) -> Path:
    # fileio has text writers only; same pattern for a binary file: temporary file beside it, then os.replace.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Path(tmp).unlink()
        conn = sqlite3.connect(tmp)
        try:
            build_bookshop(conn)
        finally:
            conn.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_EXPECTED = ("train.jsonl", "test.jsonl", DB_FILENAME, "README.md")


def builtin_text2sql_dir() -> Path:
    """The built-in task's directory under ``${TUNELAB_CACHE:-~/.cache/tunelab}/data/``, created on first use.

    It is written into a temporary directory beside it and renamed into place, so a half-written copy is
    never seen; a copy with a file missing is rebuilt.
    """
    from tunelab.models import cache_dir

    root = cache_dir().expanduser() / "data"
    target = root / VERSION
    if all((target / name).is_file() for name in _EXPECTED):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}.", dir=root))
    except OSError as exc:
        raise TunelabError(f"cannot create the tunelab cache in {str(root)!r} ({exc}); set TUNELAB_CACHE to a writable folder") from None
    try:
        write_text2sql(tmp)
        make_shared(tmp)
        if target.exists():  # incomplete copy: move it aside, then replace
            stale = Path(tempfile.mkdtemp(prefix=f".{VERSION}.stale.", dir=root))
            os.replace(target, stale / VERSION)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not all((target / name).is_file() for name in _EXPECTED):  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
