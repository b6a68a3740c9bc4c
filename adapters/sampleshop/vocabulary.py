"""The words a sample point-of-sale database is made of: names, streets, products, notes.

Plain tuples, chosen from with a seeded `random.Random`, so that a seed determines every byte.
"""

from __future__ import annotations


def _words(text: str, separator: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(separator))


FIRST_NAMES = _words(
    "Ana Maria Jose Luis Carmen Juan Sofia Pedro Lucia Carlos Elena Miguel Laura Jorge Isabel "
    "Pablo Marta David Paula Diego Sara Javier Clara Andres Julia Tomas Irene Hugo Alba Mateo "
    "Emma Liam Olivia Noah Ava Ethan Mia Lucas Chloe Leo Grace Oscar Nina Adam Ruth Felix Vera "
    "Samuel Rosa Daniel Eva Victor Ines Raul Lola Marco Aitana Bruno Noelia Ivan Celia"
)
LAST_NAMES = _words(
    "Garcia Martinez Lopez Sanchez Perez Gomez Martin Jimenez Ruiz Hernandez Diaz Moreno Alvarez "
    "Romero Alonso Gutierrez Navarro Torres Dominguez Vazquez Ramos Gil Ramirez Serrano Blanco "
    "Molina Morales Suarez Ortega Delgado Castro Ortiz Rubio Marin Sanz Iglesias Nunez Medina "
    "Garrido Cortes Castillo Santos Lozano Guerrero Cano Prieto Mendez Cruz Calvo Gallego Vidal "
    "Leon Marquez Herrera Pena Flores Cabrera Campos Vega Fuentes Carrasco Diez Caballero Reyes"
)
STREETS = _words(
    "Main Oak Maple Cedar Pine Elm Washington Lake Hill Park River Church Market Mill Spring "
    "Sunset Highland Forest Meadow Harbor Bridge Station Garden Valley Ridge Orchard Willow "
    "Chestnut Union Franklin Jefferson Madison Lincoln Jackson Walnut Birch Cherry Poplar"
)
STREET_KINDS = ("St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Way", "Ct", "Pl")
CITIES = (
    ("Springfield", "IL"),
    ("Riverside", "CA"),
    ("Franklin", "TN"),
    ("Greenville", "SC"),
    ("Bristol", "CT"),
    ("Clinton", "IA"),
    ("Fairview", "OR"),
    ("Salem", "MA"),
    ("Madison", "WI"),
    ("Georgetown", "TX"),
    ("Arlington", "VA"),
    ("Ashland", "OH"),
    ("Dover", "DE"),
    ("Oxford", "MS"),
    ("Jackson", "WY"),
    ("Burlington", "VT"),
    ("Manchester", "NH"),
    ("Milton", "FL"),
    ("Newport", "RI"),
    ("Lexington", "KY"),
)
EMAIL_DOMAINS = ("example.com", "mail.example", "post.example", "inbox.example", "shop.example")
BRANDS = _words(
    "Acme Nordwind Solara Brightway Kestrel Tundra Valemont Oakridge Pioneer Lumen Corvid "
    "Halcyon Meridian Summit Zephyr Atlas Ember Harbor Granite Willowby"
)
ADJECTIVES = _words(
    "classic organic premium compact deluxe lightweight durable fresh spicy smoked roasted "
    "wireless ergonomic stainless vintage rustic crispy creamy sparkling refillable family-size "
    "travel eco-friendly handmade seasonal frozen gluten-free reinforced adjustable"
)
NOUNS = _words(
    "coffee beans,tea sampler,olive oil,pasta,rice,chocolate bar,granola,cereal,orange juice,"
    "yogurt,cheddar,sourdough,bagel,notebook,pen set,stapler,backpack,water bottle,lunch box,"
    "phone charger,headphones,desk lamp,extension cord,batteries,light bulb,shampoo,"
    "toothpaste,soap dish,sponge,trash bags,paper towels,dog food,cat litter,candle,mug,"
    "frying pan,cutting board,knife set,umbrella,sunglasses,socks,t-shirt,cap,gloves,scarf",
    ",",
)
MATERIALS = ("cotton", "steel", "bamboo", "glass", "ceramic", "recycled plastic", "oak", "wool")
CATEGORIES = ("GRO", "BEV", "HOM", "ELE", "OFF", "PER", "PET", "APP", "KIT", "OUT")
PAYMENT_METHODS = ("card", "cash", "mobile", "gift_card", "voucher")
PAYMENT_WEIGHTS = (55, 25, 15, 3, 2)
NOTE_EXTRAS = (
    "",
    "",
    "",
    "loyalty card scanned",
    "gift wrap",
    "bag fee waived",
    "split tender",
    "price match applied",
    "manager override",
    "receipt emailed",
    "returning customer",
    "promo SPRING10",
    "delivery requested",
    "paid exact change",
    "tax exempt form on file",
)
DESCRIPTION_TEMPLATES = (
    "The {adj} {noun} from {brand} is made of {material} and built for everyday use.",
    "Customers love this {adj} {noun}; it pairs well with our {adj2} {noun2}.",
    "Store in a cool, dry place. Contains no artificial colours. Sold by the unit.",
    "{brand} guarantees every {noun} for {years} years against manufacturing defects.",
    "Best seller in the {category} aisle, restocked every {weekday}.",
    "Dimensions: {w} x {h} x {d} cm, weight {grams} g, packed in {material}.",
    "Limited {adj} edition, available while supplies last at participating stores.",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Weighted by repetition: most baskets are small, a few are larger.
ITEM_COUNTS = (1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5)
QUANTITIES = (1, 1, 1, 1, 1, 2, 2, 3, 4, 6)
