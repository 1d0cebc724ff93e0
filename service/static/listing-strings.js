// Every word of the reviewer page (/review) and of the seller page's listing panel, in one
// dictionary per language. French is the default; the page's <html lang> chooses.
// Reasons come from the API as {code, text, params}: each code has its sentence here.
"use strict";

const LISTING_STRINGS = {
  fr: {
    review_title: "Revue des annonces",
    review_sub: "· Revue des annonces",
    token_label: "Jeton de relecteur",
    token_hint: "Le jeton REVIEW_TOKEN du serveur ; gardé dans cet onglet seulement.",
    token_button: "Se connecter",
    token_forget: "Oublier le jeton",
    token_missing: "Saisissez le jeton de relecteur pour voir la file.",
    filter_label: "Catégorie proposée",
    filter_all: "Toutes",
    waiting_count: "{n} annonce(s) en attente",
    position: "Annonce {i} sur {n} affichées",
    empty: "Aucune annonce en attente. Revenez plus tard.",
    loading: "Chargement…",
    no_photo: "pas de photo",
    suggested: "Catégorie proposée",
    confidence: "Confiance {pct}",
    reasons_title: "Pourquoi une revue",
    choices_title: "Choisir une catégorie",
    choice_button: "{key} · {path} ({pct})",
    other_label: "Autre catégorie (A >> B >> C)",
    other_button: "Classer ici",
    other_new: "nouvelle catégorie",
    other_unknown: "« {path} » n'existe pas encore dans l'index : cochez « nouvelle catégorie » pour la créer.",
    reject_button: "r · Rejeter",
    previous_button: "← Précédente",
    next_button: "Suivante →",
    keys_hint: "Clavier : 1, 2, 3 choisissent une catégorie, r rejette, ← → changent d'annonce.",
    neighbours_title: "Produits les plus proches du catalogue",
    similarity: "similarité {score}",
    filed: "« {title} » est classée dans {path}.",
    rejected: "« {title} » est rejetée : elle n'entre pas dans le catalogue.",
    error: "Échec : {detail}",
    error_token: "Jeton refusé : vérifiez le jeton de relecteur.",
    // seller page: what happens after a listing
    list_title: "Mettre en vente",
    list_hint: "Publie l'annonce : classée tout de suite si la catégorie est sûre, sinon relue par une personne.",
    list_token_label: "Jeton vendeur (API_TOKEN)",
    list_button: "Mettre en vente",
    list_sending: "Envoi de l'annonce…",
    list_needs_text: "Donnez au moins un titre à l'annonce.",
    next_filed: "Votre annonce est en ligne, classée dans {path}.",
    next_review: "Votre annonce attend un relecteur avant d'être classée. La catégorie proposée est {path}.",
    next_why: "Pourquoi : {reasons}",
    next_decided: "Un relecteur l'a déjà traitée.",
    // reasons (API code -> sentence)
    reason_confident: "la confiance ({score}) atteint le seuil ({threshold}) d'une annonce {kind}",
    reason_low_confidence: "la confiance ({score}) est sous le seuil ({threshold}) d'une annonce {kind}",
    reason_photo_text_disagree: "la photo ressemble à {photo}, le texte à {text}",
    reason_weak_agreement: "la photo et le texte ne s'accordent pas assez sur {category}",
    reason_kind_not_automatic: "les annonces {kind} ne sont pas classées automatiquement : trop peu d'indices pour tenir la précision promise",
    reason_split_vote: "les produits similaires se partagent entre {category} ({share}) et {runner_up} ({runner_up_share})",
    reason_no_photo: "sans photo, la suggestion repose sur le texte seul",
    reason_no_text: "sans titre ni description, la suggestion repose sur la photo seule",
    reason_uncalibrated: "ce catalogue n'a pas de seuil automatique calibré : toute annonce est relue",
    reason_no_neighbours: "aucun produit similaire dans le catalogue",
    reasons_join: " ; ",
    // listing kinds (indexer.categorizer.kinds), as they read inside a reason
    "kind_photo+text": "avec photo, titre et description",
    "kind_photo+title": "avec photo et titre",
    kind_photo: "avec une photo seule",
    kind_text: "avec titre et description sans photo",
    kind_title: "avec un titre seul",
    "kind_short title": "avec un titre court seul",
    "kind_other-language text": "en une autre langue que l'anglais, sans photo",
    "kind_photo+other-language text": "avec photo et texte en une autre langue que l'anglais",
  },
  en: {
    review_title: "Listing review",
    review_sub: "· Listing review",
    token_label: "Reviewer token",
    token_hint: "The server's REVIEW_TOKEN; kept in this tab only.",
    token_button: "Sign in",
    token_forget: "Forget the token",
    token_missing: "Enter the reviewer token to see the queue.",
    filter_label: "Suggested category",
    filter_all: "All",
    waiting_count: "{n} listing(s) waiting",
    position: "Listing {i} of {n} shown",
    empty: "No listing is waiting. Come back later.",
    loading: "Loading…",
    no_photo: "no photo",
    suggested: "Suggested category",
    confidence: "Confidence {pct}",
    reasons_title: "Why it needs a review",
    choices_title: "Pick a category",
    choice_button: "{key} · {path} ({pct})",
    other_label: "Another category (A >> B >> C)",
    other_button: "File here",
    other_new: "new category",
    other_unknown: "“{path}” is not in the index yet: tick “new category” to create it.",
    reject_button: "r · Reject",
    previous_button: "← Previous",
    next_button: "Next →",
    keys_hint: "Keyboard: 1, 2, 3 pick a category, r rejects, ← → move between listings.",
    neighbours_title: "Most similar products of the catalogue",
    similarity: "similarity {score}",
    filed: "“{title}” is filed in {path}.",
    rejected: "“{title}” is rejected: it does not enter the catalogue.",
    error: "Failed: {detail}",
    error_token: "Token refused: check the reviewer token.",
    list_title: "List this product",
    list_hint: "Publishes the listing: filed at once when the category is certain, else checked by a person.",
    list_token_label: "Seller token (API_TOKEN)",
    list_button: "List this product",
    list_sending: "Sending the listing…",
    list_needs_text: "Give the listing at least a title.",
    next_filed: "Your listing is online, filed in {path}.",
    next_review: "Your listing waits for a reviewer before it is filed. The suggested category is {path}.",
    next_why: "Why: {reasons}",
    next_decided: "A reviewer has already handled it.",
    reason_confident: "the confidence ({score}) reaches the threshold ({threshold}) of a listing {kind}",
    reason_low_confidence: "the confidence ({score}) is below the threshold ({threshold}) of a listing {kind}",
    reason_photo_text_disagree: "the photo looks like {photo}, the text like {text}",
    reason_weak_agreement: "the photo and the text do not agree enough on {category}",
    reason_kind_not_automatic: "listings {kind} are not filed automatically: too little evidence to keep the promised precision",
    reason_split_vote: "similar products are split between {category} ({share}) and {runner_up} ({runner_up_share})",
    reason_no_photo: "no photo: the suggestion rests on the text alone",
    reason_no_text: "no title or description: the suggestion rests on the photo alone",
    reason_uncalibrated: "this catalogue has no calibrated auto threshold: every listing is reviewed",
    reason_no_neighbours: "no similar product in the catalogue",
    reasons_join: "; ",
    "kind_photo+text": "with photo, title and description",
    "kind_photo+title": "with a photo and a title",
    kind_photo: "with a photo alone",
    kind_text: "with title and description, no photo",
    kind_title: "with a title alone",
    "kind_short title": "with a short title alone",
    "kind_other-language text": "in another language than English, no photo",
    "kind_photo+other-language text": "with a photo and text in another language than English",
  },
};

function listingLang() {
  const lang = (document.documentElement.lang || "fr").slice(0, 2);
  return LISTING_STRINGS[lang] ? lang : "fr";
}

function lt(key, params = {}) {
  const text = LISTING_STRINGS[listingLang()][key];
  if (text === undefined) throw new Error(`missing string ${key}`);
  return Object.entries(params).reduce((s, [name, value]) => s.replaceAll(`{${name}}`, String(value)), text);
}

function listingPercent(x) {
  return new Intl.NumberFormat(listingLang(), { style: "percent", maximumFractionDigits: 0 }).format(x);
}

// One reason of the API in the page's language (shares as percentages); its English text if the code is new.
function reasonSentence(reason) {
  const key = `reason_${reason.code}`;
  if (LISTING_STRINGS[listingLang()][key] === undefined) return reason.text;
  const params = {};
  const words = LISTING_STRINGS[listingLang()];
  for (const [name, value] of Object.entries(reason.params || {})) {
    if (typeof value === "number") params[name] = listingPercent(value);
    else if (name === "kind") params[name] = words[`kind_${value}`] || value;
    else params[name] = value;
  }
  return lt(key, params);
}

// The API's reasons as one sentence of the page's language (the seller page's answer and listing panel).
function reasonList(reasons) {
  return reasons.map(reasonSentence).join(lt("reasons_join"));
}
