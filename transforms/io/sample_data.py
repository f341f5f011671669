"""A small bilingual (English/Russian) sample collection the project writes itself.

Twelve topics, three passages each, three queries per topic (English and
Russian mixed), graded judgments: the first passage of a topic answers
its queries best (relevance 2), the other two are related (relevance 1).
Used by run_local.sh and the tests; not a benchmark.
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.core.splits import split_of

# (topic, [(title, text) x 3], [query x 2])
TOPICS = [
    ('boundary_layer', [
        ('Boundary layer transition on a flat plate',
         'Measurements of laminar to turbulent transition in the boundary layer of a flat plate at '
         'low speeds show that free-stream turbulence moves the transition point upstream.'),
        ('Skin friction in turbulent boundary layers',
         'Skin friction coefficients of turbulent boundary layers were measured with a floating '
         'element balance and compared with the law of the wall.'),
        ('Пограничный слой на крыле',
         'Отрыв пограничного слоя на крыле самолёта приводит к сваливанию; щитки и закрылки '
         'задерживают отрыв потока при больших углах атаки.'),
    ], ['where does the boundary layer on a flat plate become turbulent',
        'переход ламинарного пограничного слоя в турбулентный',
        'free-stream turbulence and transition on a flat plate']),
    ('heat_transfer', [
        ('Heat transfer in hypersonic flow',
         'Aerodynamic heating of blunt bodies in hypersonic flow is dominated by the stagnation '
         'point heat flux, which scales with the square root of density over nose radius.'),
        ('Теплозащита спускаемых аппаратов',
         'Абляционные покрытия защищают спускаемый аппарат от нагрева при входе в атмосферу: '
         'материал испаряется и уносит тепло.'),
        ('Heat conduction in composite slabs',
         'Transient heat conduction in a slab made of two layers is solved with Laplace '
         'transforms; the interface temperature depends on the ratio of conductivities.'),
    ], ['stagnation point heating of blunt bodies at hypersonic speed',
        'нагрев аппарата при входе в атмосферу',
        'аэродинамический нагрев затупленного тела']),
    ('patents_packaging', [
        ('СОСТАВ ДЛЯ БИОРАЗЛАГАЕМОЙ ПОЛИМЕРНОЙ ПЛЕНКИ',
         'Изобретение относится к биоразлагаемой упаковочной плёнке на основе крахмала и '
         'полимолочной кислоты, которая разлагается в компосте за девяносто дней.'),
        ('Compostable food packaging',
         'A food container made of moulded bagasse fibre with a plant-based coating is fully '
         'compostable and resists grease.'),
        ('Упаковка для замороженных продуктов',
         'Многослойная плёнка для замороженных продуктов сохраняет прочность при минус '
         'сорока градусах.'),
    ], ['биоразлагаемая упаковка для продуктов', 'biodegradable film for food packaging',
        'плёнка из крахмала и полимолочной кислоты']),
    ('online_learning', [
        ('Платформа для онлайн-обучения врачей',
         'Интерактивная платформа для профессионального медицинского образования объединяет '
         'виртуальные симуляции, лекции и проверку навыков.'),
        ('Adaptive online courses',
         'Adaptive learning systems choose the next exercise from a model of what the student '
         'already knows, which shortens online courses.'),
        ('Дистанционные экзамены',
         'Системы прокторинга следят за студентом через камеру во время дистанционного '
         'экзамена.'),
    ], ['интерактивные платформы для онлайн-обучения', 'virtual training platform for doctors',
        'simulations and lectures for medical education']),
    ('bread', [
        ('Sourdough bread fermentation',
         'Sourdough bread rises because wild yeast and lactic acid bacteria ferment the flour; a '
         'long cold fermentation gives a more sour loaf.'),
        ('Ржаной хлеб на закваске',
         'Для ржаного хлеба готовят закваску из ржаной муки и воды и выдерживают её сутки в '
         'тепле.'),
        ('Kneading and gluten',
         'Kneading develops gluten networks that trap carbon dioxide, so the dough holds its '
         'shape while baking.'),
    ], ['how does sourdough make bread rise', 'как испечь хлеб на закваске',
        'wild yeast and lactic acid bacteria in bread']),
    ('tea', [
        ('Brewing green tea',
         'Green tea should be brewed with water at seventy to eighty degrees for two minutes; '
         'boiling water makes it bitter.'),
        ('Чайная церемония',
         'Во время китайской чайной церемонии чай заваривают много раз небольшими порциями.'),
        ('Caffeine in tea and coffee',
         'A cup of black tea has about half the caffeine of a cup of drip coffee.'),
    ], ['what water temperature for green tea', 'как правильно заваривать зелёный чай',
        'why does boiling water make green tea bitter']),
    ('python', [
        ('Python list comprehensions',
         'A list comprehension builds a new list from an iterable in one expression, for example '
         'squares of the even numbers below ten.'),
        ('Генераторы в Python',
         'Генератор в Python возвращает значения по одному с помощью yield и не держит всю '
         'последовательность в памяти.'),
        ('Python virtual environments',
         'A virtual environment keeps the packages of one project apart from the system Python.'),
    ], ['build a list from another list in python', 'генераторы и yield в питоне',
        'list comprehension example']),
    ('databases', [
        ('Database indexes',
         'A B-tree index lets a database find rows by key in logarithmic time instead of '
         'scanning the whole table.'),
        ('Транзакции в базах данных',
         'Транзакция либо выполняется целиком, либо не выполняется вовсе; это свойство '
         'называется атомарностью.'),
        ('Column stores',
         'Columnar formats such as Parquet store each column together, which makes scans of a '
         'few columns fast and compresses well.'),
    ], ['why is a query with an index faster than a full table scan',
        'атомарность транзакций', 'индекс B-дерево в базе данных']),
    ('space', [
        ('The Moon landing',
         'Apollo 11 landed on the Moon in July 1969; Neil Armstrong and Buzz Aldrin spent about '
         'two hours walking on the surface.'),
        ('Первый полёт человека в космос',
         'Двенадцатого апреля 1961 года Юрий Гагарин совершил первый полёт человека в космос на '
         'корабле «Восток-1».'),
        ('The International Space Station',
         'The International Space Station orbits the Earth about every ninety minutes.'),
    ], ['who first walked on the moon', 'первый космонавт гагарин',
        'Apollo 11 landing in July 1969']),
    ('rivers', [
        ('Волга',
         'Волга — самая длинная река Европы; она впадает в Каспийское море.'),
        ('The Amazon river',
         'The Amazon carries more water than any other river and drains much of South America.'),
        ('River deltas',
         'A delta forms where a river slows down at its mouth and drops the sediment it carries.'),
    ], ['самая длинная река европы', 'longest river in europe',
        'река впадает в Каспийское море']),
    ('chess', [
        ('Chess openings',
         'The Sicilian Defence answers 1.e4 with 1...c5 and leads to sharp, unbalanced games.'),
        ('Шахматный эндшпиль',
         'В эндшпиле король становится активной фигурой, а проходная пешка решает исход партии.'),
        ('Chess engines',
         'Modern chess engines evaluate positions with neural networks trained by self-play.'),
    ], ['sicilian defence opening', 'роль короля в эндшпиле',
        'how to answer 1.e4 with c5']),
    ('vaccines', [
        ('How vaccines work',
         'A vaccine trains the immune system to recognise a pathogen by showing it a harmless '
         'piece of it, so that later infections are fought off quickly.'),
        ('Вакцинация детей',
         'Календарь прививок определяет, какие вакцины и в каком возрасте получают дети.'),
        ('mRNA vaccines',
         'mRNA vaccines deliver instructions for making a viral protein; the cells make the '
         'protein and the immune system learns to recognise it.'),
    ], ['how does a vaccine train the immune system', 'как работают вакцины',
        'immune system learns to recognise a harmless piece of a pathogen']),
]


# Queries of the dev split (transforms.core.splits.split_of) are held out: the
# default cross-encoder trains on the others, and run_local.sh tunes fusion on
# them (qrels_train) and reports the dev queries.
DEV_FRACTION = 0.25


def sample_tables() -> dict[str, pa.Table]:
  """Corpus, queries, qrels and the train split's qrels as Arrow tables."""
  corpus, queries, qrels = [], [], []
  for topic, passages, topic_queries in TOPICS:
    doc_ids = [f'{topic}-{i}' for i in range(1, len(passages) + 1)]
    for doc_id, (title, text) in zip(doc_ids, passages):
      corpus.append({'doc_id': doc_id, 'title': title, 'text': text})
    for j, query in enumerate(topic_queries, start=1):
      query_id = f'{topic}-q{j}'
      queries.append({'query_id': query_id, 'text': query})
      for rank, doc_id in enumerate(doc_ids):
        qrels.append({
            'query_id': query_id, 'doc_id': doc_id, 'relevance': 2 if rank == 0 else 1})
  qrels_schema = pa.schema(
      [('query_id', pa.string()), ('doc_id', pa.string()), ('relevance', pa.int32())])
  return {
      'corpus': pa.Table.from_pylist(corpus, schema=pa.schema(
          [('doc_id', pa.string()), ('title', pa.string()), ('text', pa.string())])),
      'queries': pa.Table.from_pylist(queries, schema=pa.schema(
          [('query_id', pa.string()), ('text', pa.string())])),
      'qrels': pa.Table.from_pylist(qrels, schema=qrels_schema),
      'qrels_train': pa.Table.from_pylist(
          [r for r in qrels if split_of(r['query_id'], DEV_FRACTION) == 'train'],
          schema=qrels_schema),
  }


def write_sample_data(directory: str) -> dict[str, str]:
  """Writes corpus, queries, qrels and qrels_train (.parquet); returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for name, table in sample_tables().items():
    path = os.path.join(directory, f'{name}.parquet')
    pq.write_table(table, path)
    paths[name] = path
  return paths
